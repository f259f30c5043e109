//! Cross-site request forgery: a page on another site must not be able to make a teacher's
//! browser add, change or delete anything. Two defences from OWASP's Cross-Site Request Forgery
//! Prevention Cheat Sheet (<https://cheatsheetseries.owasp.org/cheatsheets/Cross-Site_Request_Forgery_Prevention_Cheat_Sheet.html>),
//! both checked on every form post:
//!
//! 1. "Fetch Metadata headers" and "Verifying Origin with standard headers": a post whose
//!    `Sec-Fetch-Site` is not `same-origin` (or `none`, typed by the user), or whose `Origin`
//!    is not this `Host`, is refused.
//! 2. "Double Submit Cookie": every page with a form sets the cookie [`COOKIE`] to a random
//!    token and puts the same token in the form's hidden field [`FIELD`]; a post is accepted only
//!    when both are there and equal. Another site can make the browser send the cookie (though
//!    `SameSite=Strict` already stops that) but cannot read it to fill the field.
//!
//! The cheat sheet prefers the signed double submit, whose token is an HMAC under a server
//! secret. The portal's instances share no secret and keep no sessions, and a form rendered by
//! one instance must be accepted by any other behind the balancer, so the token is checked
//! against the cookie alone: the naive variant, which the Origin and Fetch Metadata checks and
//! `SameSite=Strict` back up. The cookie is not `__Host-` prefixed, since that prefix requires
//! `Secure`, which browsers refuse to set on plain http; it is `Path=/`, `HttpOnly` and
//! `SameSite=Strict`.

use std::convert::Infallible;

use warp::Filter;
use warp::http::header::{self, HeaderValue};
use warp::reply::Response;

/// The cookie holding the token.
pub const COOKIE: &str = "gradebook_csrf";
/// The form field holding the token.
pub const FIELD: &str = "csrf";

/// A token: 128 bits from the operating system's random source, as 32 lowercase hex digits.
/// Unpredictable, so a page that cannot read the cookie cannot guess the field either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrfToken(String);

impl CsrfToken {
    /// A new random token.
    pub fn generate() -> CsrfToken {
        let mut bytes = [0u8; 16];
        // The OS source fails only on a system without one, where nothing else could run.
        getrandom::fill(&mut bytes).expect("the operating system's random source");
        CsrfToken(service_runtime::trace::lower_hex(&bytes))
    }

    /// A token as sent back, if it has the form of one.
    pub fn parse(text: &str) -> Option<CsrfToken> {
        let well_formed = text.len() == 32
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| CsrfToken(text.to_owned()))
    }

    /// The token as the form field carries it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Sets the cookie on a page whose forms carry this token. Appended, so a flash cookie set on
    /// the same answer stays.
    pub fn set_on(&self, mut page: Response) -> Response {
        // Written by hand into one buffer that becomes the header's bytes: `format!` and a
        // copy into the header were over 1 % of a page's instructions.
        const ATTRIBUTES: &str = "; Path=/; HttpOnly; SameSite=Strict";
        let mut cookie = String::with_capacity(COOKIE.len() + 1 + self.0.len() + ATTRIBUTES.len());
        cookie.push_str(COOKIE);
        cookie.push('=');
        cookie.push_str(&self.0);
        cookie.push_str(ATTRIBUTES);
        page.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::try_from(cookie).expect("hex digits are a valid header value"),
        );
        page
    }
}

/// The token for a page with forms: the one the browser already holds, so that forms open in
/// several tabs all stay valid, or a new one.
pub fn page_token() -> impl Filter<Extract = (CsrfToken,), Error = Infallible> + Clone {
    warp::cookie::optional::<String>(COOKIE).map(|held: Option<String>| {
        held.as_deref()
            .and_then(CsrfToken::parse)
            .unwrap_or_else(CsrfToken::generate)
    })
}

/// A form that carries the token in [`FIELD`].
pub trait CsrfForm {
    /// The token the form was sent with (empty when missing).
    fn csrf(&self) -> &str;
}

/// Why a post was refused; the page says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrfRefusal {
    #[error(
        "The form was sent from another site ({0}). Open the page on this portal and send the form from there."
    )]
    CrossSite(String),
    #[error(
        "The form's security token is missing or does not match this browser's cookie (\"gradebook_csrf\"). Reload the page and send the form again; scripts must first fetch the page with its cookie."
    )]
    Token,
}

impl warp::reject::Reject for CsrfRefusal {}

/// The headers a browser sends about where a post comes from.
#[derive(Debug, Default, Clone)]
pub struct Provenance {
    pub host: Option<String>,
    pub origin: Option<String>,
    pub fetch_site: Option<String>,
}

impl Provenance {
    /// Refuses a post that the browser says comes from another origin. A client that sends
    /// neither header (curl, a script) is left to the token check.
    pub fn check(&self) -> Result<(), CsrfRefusal> {
        if let Some(site) = &self.fetch_site
            && !matches!(site.as_str(), "same-origin" | "none")
        {
            return Err(CsrfRefusal::CrossSite(format!("Sec-Fetch-Site: {site}")));
        }
        if let Some(origin) = &self.origin {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            let same = match (authority, &self.host) {
                (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
                _ => false,
            };
            if !same {
                return Err(CsrfRefusal::CrossSite(format!("Origin: {origin}")));
            }
        }
        Ok(())
    }
}

/// Whether the form's token is the cookie's. Compared in time independent of where they differ,
/// so timing cannot reveal the cookie a digit at a time.
pub fn token_matches(cookie: Option<&str>, field: &str) -> bool {
    let Some(cookie) = cookie.and_then(CsrfToken::parse) else {
        return false;
    };
    let field = field.as_bytes();
    let cookie = cookie.as_str().as_bytes();
    field.len() == cookie.len()
        && field
            .iter()
            .zip(cookie)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// The checks of a form post that come before its body: where the browser says it comes from.
pub fn same_origin() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("host")
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("sec-fetch-site"))
        .and_then(|host, origin, fetch_site: Option<String>| async move {
            let provenance = Provenance {
                host,
                origin,
                fetch_site,
            };
            provenance.check().map_err(warp::reject::custom)
        })
        .untuple_one()
}

/// A posted form of type `T` that passed both checks: the origin headers, then the token in the
/// form against the cookie.
pub fn checked<T>(
    form: impl Filter<Extract = (T,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (T,), Error = warp::Rejection> + Clone
where
    T: CsrfForm + Send + 'static,
{
    same_origin()
        .and(warp::cookie::optional::<String>(COOKIE))
        .and(form)
        .and_then(|cookie: Option<String>, form: T| async move {
            match token_matches(cookie.as_deref(), form.csrf()) {
                true => Ok(form),
                false => Err(warp::reject::custom(CsrfRefusal::Token)),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_lowercase_hex_digits_and_differ() {
        let (a, b) = (CsrfToken::generate(), CsrfToken::generate());
        assert_ne!(a, b);
        assert_eq!(CsrfToken::parse(a.as_str()), Some(a.clone()));
        for not_a_token in [
            "",
            "abc",
            &a.as_str().to_uppercase(),
            &format!("{}0", a.as_str()),
        ] {
            assert_eq!(CsrfToken::parse(not_a_token), None, "{not_a_token}");
        }
    }

    #[test]
    fn the_field_must_equal_a_well_formed_cookie() {
        let token = CsrfToken::generate();
        assert!(token_matches(Some(token.as_str()), token.as_str()));
        assert!(!token_matches(None, token.as_str()));
        assert!(!token_matches(Some(token.as_str()), ""));
        assert!(!token_matches(
            Some(token.as_str()),
            &CsrfToken::generate().0
        ));
        assert!(!token_matches(Some(""), ""));
        assert!(!token_matches(Some("x"), "x"));
    }

    #[test]
    fn posts_another_origin_sends_are_refused() {
        let from = |origin: Option<&str>, site: Option<&str>| Provenance {
            host: Some("localhost:5000".into()),
            origin: origin.map(Into::into),
            fetch_site: site.map(Into::into),
        };
        assert_eq!(from(None, None).check(), Ok(()));
        assert_eq!(
            from(Some("http://localhost:5000"), Some("same-origin")).check(),
            Ok(())
        );
        assert_eq!(from(Some("https://LOCALHOST:5000"), None).check(), Ok(()));
        for (origin, site) in [
            (Some("http://evil.example"), None),
            (Some("http://localhost:5001"), None),
            (Some("null"), None),
            (None, Some("cross-site")),
            (None, Some("same-site")),
            (Some("http://localhost:5000"), Some("cross-site")),
        ] {
            assert!(
                matches!(from(origin, site).check(), Err(CsrfRefusal::CrossSite(_))),
                "{origin:?} {site:?}"
            );
        }
    }
}
