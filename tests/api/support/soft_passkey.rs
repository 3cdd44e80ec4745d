//! A software passkey, for tests that register one without a browser: a
//! P-256 key (OpenSSL) and the answer an authenticator that verified its
//! user gives to a registration's options, with the `none` attestation the
//! gateway asks for (`authData` with the attested credential, in a few
//! lines of CBOR). Registration only: the browser tests use Chromium's
//! virtual authenticator for everything else.

use base64::Engine;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A credential: its key pair and its id.
pub struct SoftPasskey {
    x: Vec<u8>,
    y: Vec<u8>,
    id: Vec<u8>,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A CBOR head: major type and argument.
fn head(major: u8, n: usize) -> Vec<u8> {
    let m = major << 5;
    match n {
        0..=23 => vec![m | n as u8],
        24..=0xff => vec![m | 24, n as u8],
        _ => {
            let mut v = vec![m | 25];
            v.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            v
        }
    }
}

fn bytes(b: &[u8]) -> Vec<u8> {
    [head(2, b.len()), b.to_vec()].concat()
}

fn text(s: &str) -> Vec<u8> {
    [head(3, s.len()), s.as_bytes().to_vec()].concat()
}

/// The CBOR negative integer `-1 - n`.
fn negative(n: usize) -> Vec<u8> {
    head(1, n)
}

impl SoftPasskey {
    /// A new credential with a fresh P-256 key and a random 16-byte id.
    pub fn new() -> Self {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        let mut ctx = BigNumContext::new().unwrap();
        key.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
            .unwrap();
        let mut id = vec![0u8; 16];
        openssl::rand::rand_bytes(&mut id).unwrap();
        Self {
            x: x.to_vec_padded(32).unwrap(),
            y: y.to_vec_padded(32).unwrap(),
            id,
        }
    }

    /// The credential id as the gateway names it (base64url).
    pub fn id(&self) -> String {
        b64(&self.id)
    }

    /// The public key as a COSE_Key (EC2, ES256, P-256).
    fn cose_key(&self) -> Vec<u8> {
        [
            head(5, 5),
            head(0, 1),  // kty
            head(0, 2),  // EC2
            head(0, 3),  // alg
            negative(6), // -7: ES256
            negative(0), // -1: crv
            head(0, 1),  // P-256
            negative(1), // -2: x
            bytes(&self.x),
            negative(2), // -3: y
            bytes(&self.y),
        ]
        .concat()
    }

    /// The `RegisterPublicKeyCredential` JSON answering `options` (the
    /// `CreationChallengeResponse` a passkey page carries) from `origin`:
    /// user present and verified, attestation `none`.
    pub fn register(&self, options: &str, origin: &str) -> String {
        let options: Value = serde_json::from_str(options).unwrap();
        let public_key = &options["publicKey"];
        let rp_id = public_key["rp"]["id"].as_str().unwrap();
        let challenge = public_key["challenge"].as_str().unwrap();
        let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
        // User present (0x01), user verified (0x04), attested credential (0x40).
        auth_data.push(0x45);
        auth_data.extend_from_slice(&0u32.to_be_bytes());
        auth_data.extend_from_slice(&[0u8; 16]); // AAGUID
        auth_data.extend_from_slice(&u16::try_from(self.id.len()).unwrap().to_be_bytes());
        auth_data.extend_from_slice(&self.id);
        auth_data.extend_from_slice(&self.cose_key());
        let attestation = [
            head(5, 3),
            text("fmt"),
            text("none"),
            text("attStmt"),
            head(5, 0),
            text("authData"),
            bytes(&auth_data),
        ]
        .concat();
        let client_data = json!({
            "type": "webauthn.create",
            "challenge": challenge,
            "origin": origin,
            "crossOrigin": false,
        });
        json!({
            "id": self.id(),
            "rawId": self.id(),
            "type": "public-key",
            "response": {
                "attestationObject": b64(&attestation),
                "clientDataJSON": b64(client_data.to_string().as_bytes()),
            },
            "extensions": {},
        })
        .to_string()
    }
}

/// The WebAuthn options a passkey page carries (its form's `data-options`).
pub fn page_options(html: &str) -> String {
    let marker = "data-options=\"";
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no passkey options in {html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    super::html_form::decode_entities(&html[start..end])
}

/// Answers the registration form (`passkey-form`) of a passkey page of the
/// gateway at `base` with a new software passkey named `name`.
pub async fn register_on_page(
    browser: &mut super::browser::Browser,
    page: &super::browser::Page,
    base: &url::Url,
    name: &str,
) -> super::browser::Page {
    let credential = SoftPasskey::new().register(&page_options(&page.body), &base.origin().ascii_serialization());
    let mut form = page.form(Some("passkey-form"));
    form.set("credential", &credential);
    form.set("name", name);
    browser.submit(page, &form).await
}
