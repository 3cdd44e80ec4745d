//! The QR code of an `otpauth://` URI as inline SVG, generated in-process
//! (no image service, no script): black modules on white, with the quiet
//! zone, labelled for assistive technology.

/// The SVG element (no XML declaration: it is embedded in an HTML page)
/// showing `text` as a QR code, or `None` if it is too long for one.
/// `label` is the accessible name (already free of markup: it is escaped).
pub fn svg(text: &str, label: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M).ok()?;
    let rendered = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    // Drop the XML declaration and name the image.
    let start = rendered.find("<svg")?;
    let body = rendered.get(start + 4..)?;
    Some(format!(
        "<svg role=\"img\" aria-label=\"{}\"{body}",
        crate::markup::escape(label)
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_otpauth_uri_becomes_an_inline_svg() {
        let svg = super::svg(
            "otpauth://totp/Acme:jane%40acme.example?secret=JBSWY3DPEHPK3PXP&issuer=Acme",
            "QR code <for> the authenticator",
        )
        .unwrap();
        assert!(svg.starts_with("<svg role=\"img\" aria-label=\"QR code &lt;for&gt; the authenticator\" xmlns="));
        assert!(svg.ends_with("</svg>"));
        assert!(!svg.contains("<?xml"));
        assert!(svg.contains("<path"));
    }
}
