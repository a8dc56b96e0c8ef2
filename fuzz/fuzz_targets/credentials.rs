//! Credentials as clients present them: `Authorization` header values (Basic, Bearer, junk),
//! query strings (`?token=`) and `Cookie` headers (the `picamd_token` cookie). No panic; what is accepted is bounded; and what a client
//! encodes correctly is read back exactly.
//!
//! Input: the raw bytes are tried as a header value, a query string and a cookie header; then, split at
//! the first NUL, as a user and a password (or a token) that are encoded like a client would.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use picamd::auth::{is_cookie_value, Credentials, MAX_SECRET_LEN, TOKEN_COOKIE};

fuzz_target!(|data: &[u8]| {
    match Credentials::from_authorization(data) {
        Ok(Credentials::Basic { user, password }) => {
            assert!(!user.contains(':'), "user {user:?} holds the separator");
            // Base64 only shrinks: at most 3/4 of a header that is itself bounded.
            assert!(user.len() + password.len() < 3 * MAX_SECRET_LEN);
        }
        Ok(Credentials::Token(token)) => {
            assert!(!token.is_empty() && token.len() <= 4 * MAX_SECRET_LEN);
            assert_eq!(token, token.trim());
        }
        Err(_) => {}
    }
    if let Ok(query) = std::str::from_utf8(data) {
        if let Some(found) = Credentials::from_query(query) {
            let Credentials::Token(token) = found else {
                panic!("a query gave Basic credentials");
            };
            assert!(!token.is_empty() && token.len() <= MAX_SECRET_LEN);
            assert!(token.len() <= query.len());
        }
        if let Some(found) = Credentials::from_cookie(query) {
            let Credentials::Token(token) = found else {
                panic!("a cookie gave Basic credentials");
            };
            assert!(!token.is_empty() && token.len() <= MAX_SECRET_LEN);
            assert!(is_cookie_value(&token), "{token:?} is not a cookie value");
            assert!(query.contains(TOKEN_COOKIE) && query.contains(&token));
        }
    }

    // Round trips: what a correct client sends is what picamd reads.
    let (a, b) = match data.iter().position(|&x| x == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (Ok(user), Ok(password)) = (std::str::from_utf8(a), std::str::from_utf8(b)) else {
        return;
    };
    if !user.contains(':') && user.len() + password.len() < MAX_SECRET_LEN {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        for scheme in ["Basic", "basic", "BASIC"] {
            let header = format!("{scheme} {encoded}");
            assert_eq!(
                Credentials::from_authorization(header.as_bytes()),
                Ok(Credentials::Basic {
                    user: user.to_owned(),
                    password: password.to_owned()
                })
            );
        }
    }
    let token = user;
    if !token.is_empty() && token.len() <= MAX_SECRET_LEN {
        // Percent-encode every byte that is not unreserved, as URLSearchParams would.
        let mut encoded = String::new();
        for &byte in token.as_bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                encoded.push(byte as char);
            } else {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
        let query = format!("stream=1&token={encoded}&x=%ZZ");
        assert_eq!(
            Credentials::from_query(&query),
            Some(Credentials::Token(token.to_owned()))
        );
        if is_cookie_value(token) {
            let header = format!("theme=dark; {TOKEN_COOKIE}={token};x=1");
            assert_eq!(
                Credentials::from_cookie(&header),
                Some(Credentials::Token(token.to_owned()))
            );
        }
        if token == token.trim() && !token.contains(['\r', '\n']) {
            let header = format!("Bearer {token}");
            assert_eq!(
                Credentials::from_authorization(header.as_bytes()),
                Ok(Credentials::Token(token.to_owned()))
            );
        }
    }
});
