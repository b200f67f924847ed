"""A stand-in for the Python service kvserve replaces, reduced to its HTTP contract.

It serves `GET /get_value/{key}` the way the old FastAPI service did: the key is a
`uuid.UUID` path parameter (validated by pydantic), the data file is read into a dict,
and answers are FastAPI's defaults. The legacy compatibility check runs it beside
kvserve and compares the bytes of both answers.

Run: python old_service.py DATA_FILE PORT
"""

import sys
import uuid

import uvicorn
from fastapi import FastAPI, HTTPException

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
def get_value(key: uuid.UUID):
    if key not in values:
        raise HTTPException(status_code=404, detail="Key not found")
    return {"key": key, "value": values[key]}


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
