//! Who may look and act: the token (a bearer header, or the cookie the login
//! form sets, compared in constant time), the CSRF token every change must
//! carry, and the read-only mode.

use axum::extract::{Request, State as Extract};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::pages::layout;
use crate::State;

/// The cookie the login form sets.
const COOKIE: &str = "omniq_token";

/// Constant-time equality, so the time a refusal takes says nothing about
/// how much of a guess was right.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_owned))
}

/// How a request proved who it is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proof {
    /// No token is configured (a loopback dashboard).
    Open,
    /// The bearer header: a program, which no other site can make send it.
    Bearer,
    /// The cookie: a browser, which another site could make send it, so its
    /// changes need the CSRF token too.
    Cookie,
}

/// Lets through requests that carry the token (or any request when none is
/// configured); sends browsers without it to the login form and answers
/// programs 401.
pub(crate) async fn require(Extract(app): Extract<State>, mut request: Request, next: Next) -> Response {
    // The path within the dashboard, whether or not the router it is nested
    // in took the prefix off.
    let path = request.uri().path();
    let path = path.strip_prefix(app.options.prefix.as_str()).unwrap_or(path);
    let public = path == "/login" || path == "/assets/live.js" || path == "/assets/style.css";
    let proof = match app.options.token.as_deref() {
        None | Some("") => Some(Proof::Open),
        Some(token) => {
            let headers = request.headers();
            if bearer(headers).is_some_and(|given| same(given, token)) {
                Some(Proof::Bearer)
            } else if cookie(headers).is_some_and(|given| same(&given, token)) {
                Some(Proof::Cookie)
            } else {
                None
            }
        }
    };
    match proof {
        Some(proof) => {
            request.extensions_mut().insert(proof);
            next.run(request).await
        }
        None if public => {
            request.extensions_mut().insert(Proof::Cookie);
            next.run(request).await
        }
        None if wants_html(request.headers()) && request.method() == Method::GET => {
            Redirect::to(&format!("{}/login", app.options.prefix)).into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            "a token is needed: Authorization: Bearer <token>",
        )
            .into_response(),
    }
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// Refuses a change unless the dashboard may act and the request carries
/// the CSRF token (a program using the bearer header needs none).
pub(crate) fn may_change(
    app: &crate::App,
    proof: Proof,
    given: Option<&str>,
) -> Result<(), (StatusCode, &'static str)> {
    if app.options.read_only {
        return Err((StatusCode::FORBIDDEN, "this dashboard is read-only"));
    }
    if proof != Proof::Bearer && !given.is_some_and(|given| same(given, &app.csrf)) {
        return Err((
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong; reload the page and try again",
        ));
    }
    Ok(())
}

pub(crate) async fn login_page(Extract(app): Extract<State>) -> Response {
    login_form(&app, None).into_response()
}

fn login_form(app: &crate::App, error: Option<&str>) -> maud::Markup {
    layout(
        app,
        "Log in",
        html! {
            h1 { "Log in" }
            @if let Some(error) = error { p.error { (error) } }
            form method="post" action={ (app.options.prefix) "/login" } {
                label { "Token " input type="password" name="token" autofocus; }
                " " button type="submit" { "Log in" }
            }
        },
    )
}

#[derive(Deserialize)]
pub(crate) struct Login {
    token: String,
}

/// Checks the token and sets it as an HTTP-only, same-site cookie.
pub(crate) async fn login(Extract(app): Extract<State>, Form(form): Form<Login>) -> Response {
    match app.options.token.as_deref() {
        Some(token) if !token.is_empty() && same(&form.token, token) => {
            let cookie = format!(
                "{COOKIE}={}; HttpOnly; SameSite=Strict; Path={}",
                form.token,
                app.home()
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to(app.home())).into_response()
        }
        None | Some("") => Redirect::to(app.home()).into_response(),
        Some(_) => (
            StatusCode::UNAUTHORIZED,
            login_form(&app, Some("That is not the token.")),
        )
            .into_response(),
    }
}
