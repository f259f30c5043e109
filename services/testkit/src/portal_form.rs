//! What a script does to send one of the portal's forms: fetch a page with a form first, then
//! send its CSRF cookie back with the form and the same token in the form's `csrf` field.

/// The CSRF token a portal page handed out. Any instance accepts it, for any of its forms, as
/// long as the cookie comes with it.
#[derive(Debug, Clone)]
pub struct FormToken {
    token: String,
}

impl FormToken {
    /// GETs `page_url` (a portal page with a form: `/`, `/students/1`, ...) and keeps the token
    /// of the `gradebook_csrf` cookie it sets.
    pub async fn fetch(http: &reqwest::Client, page_url: &str) -> Result<FormToken, String> {
        let response = http
            .get(page_url)
            .send()
            .await
            .map_err(|err| format!("GET {page_url}: {err}"))?;
        let status = response.status();
        let token = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(|cookie| cookie.strip_prefix("gradebook_csrf="))
            .and_then(|rest| rest.split(';').next())
            .map(str::to_owned);
        match token {
            Some(token) => Ok(FormToken { token }),
            None => Err(format!(
                "GET {page_url}: {status} without a gradebook_csrf cookie"
            )),
        }
    }

    /// The token itself.
    pub fn as_str(&self) -> &str {
        &self.token
    }

    /// A form post to `url` with `fields` (urlencoded, possibly empty), the cookie, and the
    /// token added as the `csrf` field.
    pub fn post(&self, http: &reqwest::Client, url: &str, fields: &str) -> reqwest::RequestBuilder {
        let separator = if fields.is_empty() { "" } else { "&" };
        http.post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("gradebook_csrf={}", self.token))
            .body(format!("{fields}{separator}csrf={}", self.token))
    }
}
