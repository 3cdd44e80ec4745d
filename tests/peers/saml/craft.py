"""Crafts signed SAML responses with signxml + lxml (an XML-DSig
implementation independent of the gateway's), including the attack shapes
the gateway must refuse.

stdin:  {"idp": {"entity_id", "key_pem"?, "cert_pem"?}, "attacker": bool,
         "cases": [{"name", ...case fields, see `build`}]}
stdout: {"idp": {"entity_id", "key_pem", "cert_pem"}, "metadata": str,
         "responses": {name: xml}}

Trust-related case fields: "name_id_format" (null: no Format),
"response_issue_instant", "assertion_issue_instant", "authn_instant",
"session_not_on_or_after", "conditions_xml" (raw elements appended to
<Conditions>; the saml: and xsi: prefixes are declared) and "lookalike"
("status": StatusCode with samlp:Value only; "version": saml:Version only).
Issuer and signature fields: "issuer_format" / "response_issuer_format"
(a Format on the Assertion's / Response's Issuer), "response_issuer" (null:
the Response has no Issuer), "c14n" (the canonicalization the signature
uses, SignedInfo's and the Reference's), "confirmations" (the
SubjectConfirmation Methods, in order; only the bearer one is the usual).
"""
import base64
import copy
import datetime as dt
import json
import sys
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import XMLSigner

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"


class LegacySigner(XMLSigner):
    """signxml refuses SHA-1 by default; the SHA-1 cases need it on purpose."""

    def check_deprecated_methods(self):
        pass


def new_key(cn):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365 * 30))
        .sign(key, hashes.SHA256())
    )
    return (
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def cert_b64(cert_pem):
    return "".join(l for l in cert_pem.splitlines() if "CERTIFICATE" not in l)


def metadata(entity_id, cert_pem, sso):
    return (
        '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
        'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="%s">'
        '<md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
        '<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>%s'
        "</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        '<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="%s"/>'
        "</md:IDPSSODescriptor></md:EntityDescriptor>" % (entity_id, cert_b64(cert_pem), sso)
    )


def E(ns, tag, attrib=None, text=None, nsmap=None):
    el = etree.Element("{%s}%s" % (ns, tag), attrib=attrib or {}, nsmap=nsmap)
    if text is not None:
        el.text = text
    return el


def sub(parent, ns, tag, attrib=None, text=None):
    el = etree.SubElement(parent, "{%s}%s" % (ns, tag), attrib=attrib or {})
    if text is not None:
        el.text = text
    return el


def assertion(c, issuer):
    aid = c.get("assertion_id") or "_" + uuid.uuid4().hex
    a = E(SAML, "Assertion", {"ID": aid, "Version": "2.0",
                              "IssueInstant": c.get("assertion_issue_instant", c["issue_instant"])},
          nsmap={"saml": SAML})
    issuer_attrs = {"Format": c["issuer_format"]} if c.get("issuer_format") else {}
    sub(a, SAML, "Issuer", issuer_attrs, text=c.get("assertion_issuer", issuer))
    s = sub(a, SAML, "Subject")
    fmt = c.get("name_id_format", "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress")
    sub(s, SAML, "NameID", {"Format": fmt} if fmt else {}, text=c["name_id"])
    for method in c.get("confirmations") or ["urn:oasis:names:tc:SAML:2.0:cm:bearer"]:
        sc = sub(s, SAML, "SubjectConfirmation", {"Method": method})
        scd = {"Recipient": c.get("recipient", c["acs_url"])}
        if c.get("scd_not_on_or_after"):
            scd["NotOnOrAfter"] = c["scd_not_on_or_after"]
        if c.get("in_response_to"):
            scd["InResponseTo"] = c["in_response_to"]
        sub(sc, SAML, "SubjectConfirmationData", scd)
    cond = sub(a, SAML, "Conditions", {"NotBefore": c["not_before"], "NotOnOrAfter": c["not_on_or_after"]})
    if c.get("audience", c["sp_entity_id"]) is not None:
        ar = sub(cond, SAML, "AudienceRestriction")
        sub(ar, SAML, "Audience", text=c.get("audience", c["sp_entity_id"]))
    # Extra conditions as raw XML (prefixes saml: and xsi: are declared).
    for x in c.get("conditions_xml") or []:
        wrapper = etree.fromstring('<w xmlns:saml="%s" xmlns:xsi="%s">%s</w>' % (SAML, XSI, x))
        for child in wrapper:
            cond.append(child)
    st_attrs = {"AuthnInstant": c.get("authn_instant", c["issue_instant"]), "SessionIndex": "_sess-" + aid}
    if c.get("session_not_on_or_after"):
        st_attrs["SessionNotOnOrAfter"] = c["session_not_on_or_after"]
    st = sub(a, SAML, "AuthnStatement", st_attrs)
    ac = sub(st, SAML, "AuthnContext")
    sub(ac, SAML, "AuthnContextClassRef",
        text=c.get("authn_context_class_ref",
                   "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"))
    attrs = c.get("attributes") or {}
    if attrs:
        ats = sub(a, SAML, "AttributeStatement")
        for name, values in attrs.items():
            at = sub(ats, SAML, "Attribute", {"Name": name})
            for v in values:
                sub(at, SAML, "AttributeValue", text=v)
    return a


def sign(el, key_pem, cert_pem, c):
    """Enveloped signature of `el`, placed right after its Issuer."""
    placeholder = E(DS, "Signature", {"Id": "placeholder"}, nsmap={"ds": DS})
    el.insert(1, placeholder)
    cls = LegacySigner if "sha1" in (c.get("sig_alg", "") + c.get("digest", "")) else XMLSigner
    signer = cls(
        signature_algorithm=c.get("sig_alg", "rsa-sha256"),
        digest_algorithm=c.get("digest", "sha256"),
        c14n_algorithm=c.get("c14n", EXC_C14N),
    )
    signer.namespaces = {"ds": DS}
    doc = etree.fromstring(etree.tostring(el))
    return signer.sign(doc, key=key_pem, cert=cert_pem, reference_uri="#" + el.get("ID"))


def response(c, issuer, inner):
    attrs = {"ID": "_" + uuid.uuid4().hex, "Version": "2.0",
             "IssueInstant": c.get("response_issue_instant", c["issue_instant"])}
    lookalike = c.get("lookalike")
    if lookalike == "version":
        # saml:Version instead of Version: a namespaced look-alike only.
        del attrs["Version"]
        attrs["{%s}Version" % SAML] = "2.0"
    if c.get("destination", c["acs_url"]) is not None:
        attrs["Destination"] = c.get("destination", c["acs_url"])
    if c.get("response_in_response_to", c.get("in_response_to")):
        attrs["InResponseTo"] = c.get("response_in_response_to", c.get("in_response_to"))
    r = E(SAMLP, "Response", attrs, nsmap={"samlp": SAMLP, "saml": SAML})
    if c.get("response_issuer", issuer) is not None:
        issuer_attrs = {"Format": c["response_issuer_format"]} if c.get("response_issuer_format") else {}
        sub(r, SAML, "Issuer", issuer_attrs, text=c.get("response_issuer", issuer))
    st = sub(r, SAMLP, "Status")
    status = c.get("status", "urn:oasis:names:tc:SAML:2.0:status:Success")
    if lookalike == "status":
        # samlp:Value instead of Value: the real Value is missing.
        code = sub(st, SAMLP, "StatusCode", {"{%s}Value" % SAMLP: status})
    else:
        code = sub(st, SAMLP, "StatusCode", {"Value": status})
    if c.get("sub_status"):
        sub(code, SAMLP, "StatusCode", {"Value": c["sub_status"]})
    for i in inner:
        r.append(i)
    return r


def evil_copy(signed_assertion, name_id):
    """An unsigned assertion like the signed one, for someone else."""
    evil = copy.deepcopy(signed_assertion)
    for s in evil.findall("{%s}Signature" % DS):
        evil.remove(s)
    evil.set("ID", "_evil" + uuid.uuid4().hex)
    evil.find(".//{%s}NameID" % SAML).text = name_id
    return evil


def build(c, idp, attacker):
    issuer = idp["entity_id"]
    key, cert = (attacker if c.get("attacker_key") else (idp["key_pem"], idp["cert_pem"]))
    mode = c.get("sign", "assertion")
    a = assertion(c, issuer)
    if mode in ("assertion", "both"):
        a = sign(a, key, cert, c)
    variant = c.get("variant")
    victim = "admin@victim.test"
    inner = [a]
    if variant == "wrap_before":
        inner = [evil_copy(a, victim), a]
    elif variant == "wrap_after":
        inner = [a, evil_copy(a, victim)]
    elif variant == "wrap_around":
        evil = evil_copy(a, victim)
        evil.find("{%s}Subject" % SAML).append(a)
        inner = [evil]
    elif variant == "wrap_advice":
        evil = evil_copy(a, victim)
        adv = E(SAML, "Advice")
        adv.append(a)
        evil.insert(1, adv)
        inner = [evil]
    elif variant == "wrap_object":
        evil = evil_copy(a, victim)
        sig = a.find("{%s}Signature" % DS)
        a.remove(sig)
        obj = sub(sig, DS, "Object")
        obj.append(a)
        evil.insert(1, sig)
        inner = [evil]
    r = response(c, issuer, [] if variant == "wrap_extensions" else inner)
    if variant == "wrap_extensions":
        ext = E(SAMLP, "Extensions")
        ext.append(a)
        r.insert(1, ext)
        r.append(evil_copy(a, victim))
    if mode in ("response", "both"):
        r = sign(r, key, cert, c)
    xml = etree.tostring(r).decode()
    if variant == "strip_signature":
        el = etree.fromstring(xml)
        for s in el.iter("{%s}Signature" % DS):
            s.getparent().remove(s)
        xml = etree.tostring(el).decode()
    if variant == "tamper_name_id":
        xml = xml.replace(c["name_id"], victim)
    if variant == "comment_in_name_id":
        # After signing: exclusive c14n drops comments, so the signature stays valid.
        at = c["name_id"].index(c["comment_at"])
        xml = xml.replace(c["name_id"], c["name_id"][:at] + "<!---->" + c["name_id"][at:])
    return xml


def main():
    req = json.load(sys.stdin)
    idp = dict(req["idp"])
    if not idp.get("key_pem"):
        idp["key_pem"], idp["cert_pem"] = new_key("test idp")
    attacker = new_key("attacker")
    out = {
        "idp": idp,
        "metadata": metadata(idp["entity_id"], idp["cert_pem"], idp.get("sso", "https://idp.example.test/sso")),
        "responses": {c["name"]: build(c, idp, attacker) for c in req.get("cases", [])},
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
