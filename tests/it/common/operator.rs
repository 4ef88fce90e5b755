//! An operator's console session over plain HTTP (no browser): sign in with
//! a form, keep the cookie, read the CSRF token from a page. For checking
//! what a cookie can still do after sign-out, on one replica or another.

use reqwest::redirect::Policy;

pub struct ConsoleSession {
    pub client: reqwest::Client,
    /// `relay_console=…`, as the browser would send it back.
    pub cookie: String,
}

/// A client that shows redirects instead of following them.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

/// Signs in at `{base}/console/sign-in`; `None` when the relay refused.
pub async fn sign_in(base: &str, token: &str) -> Option<ConsoleSession> {
    sign_in_from(no_redirects(), base, token).await
}

pub async fn sign_in_from(
    client: reqwest::Client,
    base: &str,
    token: &str,
) -> Option<ConsoleSession> {
    let answer = client
        .post(format!("{base}/console/sign-in"))
        .form(&[("token", token)])
        .send()
        .await
        .expect("the console answers");
    if answer.status() != 303 {
        return None;
    }
    let cookie = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    Some(ConsoleSession { client, cookie })
}

impl ConsoleSession {
    /// Status, `Location` and body of a GET of `{base}{path}` with the cookie.
    pub async fn get(&self, base: &str, path: &str) -> (u16, Option<String>, String) {
        let answer = self
            .client
            .get(format!("{base}{path}"))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("the console answers");
        let status = answer.status().as_u16();
        let location = answer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, location, answer.text().await.expect("text"))
    }

    /// Whether `{base}/console` opens with this cookie (not sent to sign in).
    pub async fn opens(&self, base: &str) -> bool {
        let (status, location, _) = self.get(base, "/console/deliveries").await;
        match status {
            200 => true,
            303 => {
                assert_eq!(location.as_deref(), Some("/console/sign-in"));
                false
            }
            other => panic!("the console answered {other}"),
        }
    }

    /// The CSRF token of this session's forms, read from a page.
    pub async fn csrf(&self, base: &str) -> String {
        let (status, _, page) = self.get(base, "/console/deliveries").await;
        assert_eq!(status, 200, "signed in");
        csrf_of(&page)
    }

    /// POSTs a console form with the cookie; status and `Location`.
    pub async fn post(
        &self,
        base: &str,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, Option<String>) {
        let answer = self
            .client
            .post(format!("{base}{path}"))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .expect("the console answers");
        let location = answer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (answer.status().as_u16(), location)
    }

    /// The session's id (`ses_…`), as the sessions list shows it.
    pub fn id(&self) -> String {
        let value = self.cookie.split_once('=').expect("name=value").1;
        value.split('.').nth(1).expect("v2.id.secret").to_owned()
    }
}

/// The value of the first `csrf` hidden field of a page.
pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF field");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("closing quote")].to_owned()
}
