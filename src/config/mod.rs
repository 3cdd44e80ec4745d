//! Configuration: a TOML file, then `PORTCULLIS_*` environment overrides,
//! validated as a whole before the port is bound. (Skeleton.)

use url::Url;

/// Joins `path` (no leading slash) under the public base URL, keeping any
/// path prefix the base has (`https://sso.example.com/gw/` + `token`).
pub fn join_public(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url.set_query(None);
    url.set_fragment(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_base_path() {
        let base = Url::parse("https://sso.example.com/gw/").unwrap();
        assert_eq!(
            join_public(&base, "token").as_str(),
            "https://sso.example.com/gw/token"
        );
        let base = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            join_public(&base, "/jwks").as_str(),
            "http://127.0.0.1:8080/jwks"
        );
    }
}
