//! Query parameters: unknown or repeated ones are refused, malformed values are 400 naming
//! the parameter and what it takes.

use crate::net::{Request, Response};

/// At most 64 characters of a client's value, for an error message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

pub fn bad_param(name: &str, value: &str, takes: &str) -> Response {
    Response::error(400, &format!("bad query parameter {name}={:?}: {takes}", clip(value)))
}

/// A typo (`?stauts=closed`) must not quietly return everything. `None`: any are allowed.
pub fn check_params(req: &Request, allowed: Option<&[&str]>) -> Result<(), Response> {
    let Some(allowed) = allowed else { return Ok(()) };
    for (i, (name, _)) in req.query.iter().enumerate() {
        if !allowed.contains(&name.as_str()) {
            let takes = if allowed.is_empty() {
                format!("{} takes no query parameters", req.path)
            } else {
                format!("{} takes {}", req.path, allowed.join(", "))
            };
            return Err(Response::error(
                400,
                &format!("unknown query parameter {:?}: {takes}", clip(name)),
            ));
        }
        if req.query.get(..i).is_some_and(|before| before.iter().any(|(n, _)| n == name)) {
            return Err(Response::error(400, &format!("query parameter {name} given twice")));
        }
    }
    Ok(())
}

/// A query parameter as `T`: `None` when absent, 400 naming it and `takes` when malformed.
pub fn parse_param<T: std::str::FromStr>(
    req: &Request,
    name: &str,
    takes: &str,
) -> Result<Option<T>, Response> {
    match req.query_param(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| bad_param(name, v, takes)),
    }
}
