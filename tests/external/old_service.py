"""A stand-in for the Python service kvserve replaces, reduced to its HTTP contract.

It serves `GET /get_value/{key}` the way the old FastAPI service did: the key is a
pydantic `UUID4` path parameter, the data file is read into a dict, and answers are
FastAPI's defaults. The legacy compatibility check runs it beside kvserve and compares
the bytes of both answers.

`UUID4`, not `uuid.UUID`: run beside kvserve (issue 16), the real service answered a
UUID of any other version (`...-11e4-...`, `...-7e4f-...`, nil, max, v1/v3/v5/v7) with
pydantic's 422 `uuid_version` ("UUID version 4 expected"), which only `UUID4` gives.
Keys of other versions in the data file were therefore unreachable through it.

Run: python old_service.py DATA_FILE PORT
"""

import sys
import uuid

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import UUID4

data_file, port = sys.argv[1], int(sys.argv[2])
values: dict[uuid.UUID, str] = {}
with open(data_file, encoding="utf-8-sig") as lines:
    for line in lines:
        line = line.rstrip("\n").rstrip("\r")
        if line:
            key, _, value = line.partition(" ")
            values[uuid.UUID(key)] = value

app = FastAPI()


@app.get("/get_value/{key}")
def get_value(key: UUID4):
    if key not in values:
        raise HTTPException(status_code=404, detail="Key not found")
    return {"key": key, "value": values[key]}


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
