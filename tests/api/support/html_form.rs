//! A small HTML form reader for the scripted browser: finds `<form>`
//! elements, their action and method, and the values their controls submit
//! (hidden inputs included). Enough for login pages and auto-submit SAML
//! POST forms; not a general HTML parser.

/// One `<form>` of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    /// The `id` attribute, if any.
    pub id: Option<String>,
    /// The `action` attribute as written (may be relative or empty).
    pub action: String,
    /// `GET` or `POST` (upper case; `GET` when absent).
    pub method: String,
    /// Name/value pairs the form submits by default, in document order.
    pub fields: Vec<(String, String)>,
}

impl Form {
    /// The first value of the field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`, replacing every existing value or adding it.
    pub fn set(&mut self, name: &str, value: &str) {
        self.fields.retain(|(n, _)| n != name);
        self.fields.push((name.to_owned(), value.to_owned()));
    }
}

/// Every form in `html`, in document order.
pub fn parse_forms(html: &str) -> Vec<Form> {
    let lower = html.to_ascii_lowercase();
    let mut forms = Vec::new();
    let mut pos = 0;
    while let Some(start) = find_tag(&lower, "form", pos) {
        let Some(tag_end) = lower[start..].find('>').map(|i| start + i) else {
            break;
        };
        let attrs = parse_attrs(&html[start + 5..tag_end]);
        let body_end = lower[tag_end..].find("</form").map_or(html.len(), |i| tag_end + i);
        let body = &html[tag_end + 1..body_end];
        forms.push(Form {
            id: attr(&attrs, "id"),
            action: attr(&attrs, "action").unwrap_or_default(),
            method: attr(&attrs, "method")
                .unwrap_or_else(|| "get".to_owned())
                .to_ascii_uppercase(),
            fields: parse_fields(body),
        });
        pos = body_end;
    }
    forms
}

/// The position of the next `<name` tag (followed by whitespace, `>` or `/`).
fn find_tag(lower: &str, name: &str, from: usize) -> Option<usize> {
    let needle = format!("<{name}");
    let mut pos = from;
    while let Some(i) = lower[pos..].find(&needle) {
        let at = pos + i;
        let next = lower[at + needle.len()..].chars().next();
        if matches!(next, Some(c) if c.is_whitespace() || c == '>' || c == '/') {
            return Some(at);
        }
        pos = at + needle.len();
    }
    None
}

fn parse_fields(body: &str) -> Vec<(String, String)> {
    let lower = body.to_ascii_lowercase();
    let mut fields = Vec::new();
    let mut pos = 0;
    loop {
        let input = find_tag(&lower, "input", pos);
        let textarea = find_tag(&lower, "textarea", pos);
        let next = match (input, textarea) {
            (Some(i), Some(t)) => Some((i.min(t), i < t)),
            (Some(i), None) => Some((i, true)),
            (None, Some(t)) => Some((t, false)),
            (None, None) => None,
        };
        let Some((start, is_input)) = next else { break };
        let Some(tag_end) = lower[start..].find('>').map(|i| start + i) else {
            break;
        };
        let name_len = if is_input { 6 } else { 9 };
        let attrs = parse_attrs(&body[start + name_len..tag_end]);
        pos = tag_end + 1;
        let Some(name) = attr(&attrs, "name") else {
            continue;
        };
        if is_input {
            let kind = attr(&attrs, "type").unwrap_or_default().to_ascii_lowercase();
            let checked = attrs.iter().any(|(n, _)| n == "checked");
            match kind.as_str() {
                // Buttons submit only when clicked; files are never needed here.
                "submit" | "button" | "image" | "reset" | "file" => continue,
                "checkbox" | "radio" if !checked => continue,
                "checkbox" | "radio" => fields.push((name, attr(&attrs, "value").unwrap_or_else(|| "on".into()))),
                _ => fields.push((name, attr(&attrs, "value").unwrap_or_default())),
            }
        } else {
            let end = lower[pos..].find("</textarea").map_or(body.len(), |i| pos + i);
            fields.push((name, decode_entities(&body[pos..end])));
            pos = end;
        }
    }
    fields
}

fn attr(attrs: &[(String, String)], name: &str) -> Option<String> {
    attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

/// Attributes of a start tag's inside (after the tag name), names lower-cased,
/// values entity-decoded.
fn parse_attrs(s: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = s.chars().collect();
    let mut attrs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == '/') {
            i += 1;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '=' && chars[i] != '/' {
            i += 1;
        }
        if start == i {
            i += 1;
            continue;
        }
        let name: String = chars[start..i].iter().collect::<String>().to_ascii_lowercase();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '=' {
            i += 1;
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i < chars.len() && (chars[i] == '"' || chars[i] == '\'') {
                let quote = chars[i];
                i += 1;
                let vstart = i;
                while i < chars.len() && chars[i] != quote {
                    i += 1;
                }
                value = chars[vstart..i].iter().collect();
                i += 1;
            } else {
                let vstart = i;
                while i < chars.len() && !chars[i].is_whitespace() {
                    i += 1;
                }
                value = chars[vstart..i].iter().collect();
            }
        }
        attrs.push((name, decode_entities(&value)));
    }
    attrs
}

/// Decodes the character references that form values use in practice:
/// the XML five and numeric ones.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';').filter(|&i| i <= 12) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn parses_login_and_saml_post_forms() {
    let html = r#"<html><body>
      <FORM id="login" method="post" action="/interaction/abc/login?x=1&amp;y=2">
        <input type="hidden" name="interaction" value="abc">
        <input type=text name=username value='al&#105;ce'>
        <input type="password" name="password">
        <input type="checkbox" name="remember" checked>
        <input type="checkbox" name="skip">
        <textarea name="note">a &lt; b</textarea>
        <button type="submit" name="go">Sign in</button>
        <input type="submit" name="go2" value="x"/>
      </FORM>
      <form method="POST" action="http://127.0.0.1:1/saml/acs"><input type="hidden" name="SAMLResponse" value="PD94bWw&#x2B;Zm9v=" /><input type="hidden" name="RelayState" value="rs"/></form>
    </body></html>"#;
    let forms = parse_forms(html);
    assert_eq!(forms.len(), 2);
    let login = &forms[0];
    assert_eq!(login.id.as_deref(), Some("login"));
    assert_eq!(login.method, "POST");
    assert_eq!(login.action, "/interaction/abc/login?x=1&y=2");
    assert_eq!(
        login.fields,
        vec![
            ("interaction".to_owned(), "abc".to_owned()),
            ("username".to_owned(), "alice".to_owned()),
            ("password".to_owned(), String::new()),
            ("remember".to_owned(), "on".to_owned()),
            ("note".to_owned(), "a < b".to_owned()),
        ]
    );
    let saml = &forms[1];
    assert_eq!(saml.method, "POST");
    assert_eq!(saml.field("SAMLResponse"), Some("PD94bWw+Zm9v="));
    assert_eq!(saml.field("RelayState"), Some("rs"));
}
