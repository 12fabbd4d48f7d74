//! What every answer is protected by before any handler runs: the `Host`
//! a token-less dashboard answers to (against DNS rebinding), the `Origin`
//! a request may come from, and the headers that keep pages out of frames
//! and scripts of other origins out of pages.

use std::net::IpAddr;

use axum::extract::{Request, State as Extract};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::State;

/// Every page's content security policy: its own scripts, styles and
/// requests only, forms posted to itself, and never inside a frame.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The host part of a `Host` or `Origin` authority, lower-cased, without
/// its port (`[::1]:8080` gives `::1`).
fn host_of(authority: &str) -> String {
    let authority = authority.trim().to_ascii_lowercase();
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_owned(),
        _ => authority,
    }
}

/// Whether a dashboard with these options answers requests for `host`.
///
/// With a token, any: a page another site loads under its own name has no
/// cookie to send. Without one, only names that cannot be made to point
/// elsewhere (loopback addresses, `localhost`, the bound address) and the
/// names the operator allowed: otherwise a site whose name is made to
/// resolve to 127.0.0.1 (DNS rebinding) could read and steer the queue.
pub(crate) fn host_allowed(app: &crate::App, host: &str) -> bool {
    if app.options.token.as_deref().is_some_and(|t| !t.is_empty()) {
        return true;
    }
    let host = host_of(host);
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        if ip.is_loopback() || app.options.bound.is_some_and(|bound| bound.ip() == ip) {
            return true;
        }
    }
    app.options
        .allowed_hosts
        .iter()
        .any(|allowed| host_of(allowed) == host)
}

/// The `Host` of a request (HTTP/1's header, or HTTP/2's authority).
fn request_host(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
}

/// Whether the request's `Origin`, if it has one, may use the dashboard:
/// its own origin, or one whose host the dashboard answers to (behind a
/// proxy the `Host` it sees is not the one the browser used).
fn origin_allowed(app: &crate::App, headers: &HeaderMap, host: &str) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host.trim()) || host_allowed(app, authority))
}

/// Refuses requests for a host the dashboard does not answer to and
/// requests from another origin (403), and adds the security headers to
/// every answer.
pub(crate) async fn protect(Extract(app): Extract<State>, request: Request, next: Next) -> Response {
    // A request without a host name comes from no browser (every browser
    // sends one), so no other site's page can have sent it.
    let host = request_host(&request);
    let host_ok = host.as_deref().is_none_or(|host| host_allowed(&app, host));
    let host = host.unwrap_or_default();
    let mut response = if !host_ok {
        (
            StatusCode::FORBIDDEN,
            "this dashboard does not answer to that host name; start it with --allow-host <name> \
             to serve it under a name of your own",
        )
            .into_response()
    } else if !origin_allowed(&app, request.headers(), &host) {
        (StatusCode::FORBIDDEN, "requests from another origin are refused").into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: under it browsers send `Origin: null` even with
    // the dashboard's own forms, which the origin check would refuse.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(host_of("LocalHost:8080"), "localhost");
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_of("rebind.attacker.example"), "rebind.attacker.example");
    }
}
