//! The admin listener: probes for orchestrators. Kept off the API listener so that a
//! flood of API traffic or an API-side auth policy never hides the process's health.

use std::sync::Arc;

use poem::web::{Data, Json};
use poem::{get, handler, Endpoint, EndpointExt, IntoResponse, Response, Route};

use super::problem::{self, Problem, ProblemKind};
use super::AppState;

/// `GET /livez`: the process is up and its runtime answers.
#[handler]
fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "live"}))
}

/// `GET /readyz`: 200 only while a dataset is loaded and the process is not shutting
/// down, so a load balancer sends traffic only where it can be answered.
#[handler]
fn readyz(Data(state): Data<&Arc<AppState>>) -> Response {
    if state.is_ready() {
        return Json(serde_json::json!({"status": "ready"})).into_response();
    }
    let problem = if state.is_shutting_down() {
        Problem::new(ProblemKind::ShuttingDown, "the server is shutting down")
    } else {
        Problem::new(ProblemKind::NotLoaded, "the data file is still loading")
    };
    problem.into_response()
}

pub fn admin_endpoint(state: Arc<AppState>) -> impl Endpoint<Output = Response> {
    problem::with_problems(
        Route::new()
            .at("/livez", get(livez))
            .at("/readyz", get(readyz))
            .data(state),
    )
}
