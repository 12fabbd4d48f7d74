//! Database URLs as they may be shown: in errors, logs, summaries and
//! `Debug` output, a URL never shows its password or a secret in its query.

/// Query parameters whose values are secrets.
const SECRET_PARAMETERS: [&str; 5] = ["password", "sslpassword", "passfile", "token", "secret"];

/// `text`, a database URL, with its password and the values of secret
/// query parameters (`password`, `sslpassword`, …) replaced by `***`. A URL
/// that cannot be parsed (say, an unencoded `#` or `@` inside the password)
/// shows only its scheme: what follows might be a password, or part of one.
/// A `#schema` fragment, as store URLs have, is kept.
pub fn redact_url(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return match text.split_once("://") {
            Some((scheme, _))
                if scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                format!("{scheme}://(a URL that cannot be read, not shown)")
            }
            _ => "(a URL that cannot be read, not shown)".to_owned(),
        };
    };
    if url.password().is_some() {
        // Fails only for URLs that cannot have credentials, which have none.
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let secret = SECRET_PARAMETERS.iter().any(|s| key.eq_ignore_ascii_case(s));
                let value = if secret {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_and_secret_parameters_are_hidden() {
        for (given, shown) in [
            (
                "postgres://ada:secret@db:5432/jobs",
                "postgres://ada:***@db:5432/jobs",
            ),
            (
                "postgres://ada:secret@db/jobs#tenant",
                "postgres://ada:***@db/jobs#tenant",
            ),
            (
                "postgres://db/jobs?password=secret&sslmode=require",
                "postgres://db/jobs?password=***&sslmode=require",
            ),
            (
                "postgres://u@db/jobs?user=u&PASSWORD=secret",
                "postgres://u@db/jobs?user=u&PASSWORD=***",
            ),
            ("postgres://db/jobs", "postgres://db/jobs"),
            ("postgres://ada@db/jobs", "postgres://ada@db/jobs"),
        ] {
            assert_eq!(redact_url(given), shown);
        }
    }

    #[test]
    fn a_url_that_cannot_be_read_shows_no_part_of_it() {
        for given in [
            "postgres://ada:se#cret@db/jobs",
            "postgres://ada:s@c:ret@db:x/jobs",
            "not a url secret",
        ] {
            let shown = redact_url(given);
            assert!(
                !shown.contains("se") || shown.starts_with("postgres://("),
                "{shown}"
            );
            assert!(
                !shown.contains("cret") && !shown.contains("secret") && !shown.contains("ada"),
                "{shown}"
            );
        }
    }
}
