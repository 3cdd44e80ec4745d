"""A real pysaml2 IdP (saml2.server.Server) answering the gateway's
AuthnRequest, configured from the gateway's SP metadata.

stdin:  {"sp_metadata": str, "idp_entity_id": str, "key_pem": str, "cert_pem": str,
         "saml_request": str (HTTP-Redirect SAMLRequest value), "relay_state": str,
         "name_id": str, "identity": {attr: [values]},
         "sign_response": bool, "sign_assertion": bool, "encrypt": bool,
         "msg_enc": xmlenc URI, "key_enc": xmlenc URI}
stdout: {"saml_response": base64, "request_id": str, "acs_url": str, "metadata": idp metadata}
"""
import base64
import functools
import warnings
import json
import os
import shutil
import sys
import tempfile

import saml2.entity
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, sigver
from saml2.config import IdPConfig
from saml2.metadata import create_metadata_string
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_EMAILADDRESS, NameID
from saml2.server import Server


def main():
    warnings.simplefilter("ignore")
    req = json.load(sys.stdin)
    work = tempfile.mkdtemp()
    try:
        key_file = os.path.join(work, "idp.key")
        cert_file = os.path.join(work, "idp.crt")
        with open(key_file, "w") as f:
            f.write(req["key_pem"])
        with open(cert_file, "w") as f:
            f.write(req["cert_pem"])
        sso = "https://idp.example.test/sso"
        conf = IdPConfig()
        conf.load(
            {
                "entityid": req["idp_entity_id"],
                "service": {
                    "idp": {
                        "endpoints": {
                            "single_sign_on_service": [
                                (sso, BINDING_HTTP_REDIRECT),
                                (sso, BINDING_HTTP_POST),
                            ]
                        },
                        "policy": {
                            "default": {
                                "lifetime": {"minutes": 5},
                                "attribute_restrictions": None,
                                "name_form": NAME_FORMAT_URI,
                            }
                        },
                        "want_authn_requests_signed": False,
                    }
                },
                "key_file": key_file,
                "cert_file": cert_file,
                "xmlsec_binary": shutil.which("xmlsec1"),
                "metadata": {"inline": [req["sp_metadata"]]},
                "delete_tmpfiles": True,
            }
        )
        # pysaml2 encrypts with 3DES by default; the gateway only takes AES,
        # so choose the algorithms (pysaml2's own encryption code still runs).
        saml2.entity.pre_encryption_part = functools.partial(
            sigver.pre_encryption_part,
            msg_enc=req.get("msg_enc", "http://www.w3.org/2001/04/xmlenc#aes256-cbc"),
            key_enc=req.get("key_enc", "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p"),
        )
        idp = Server(config=conf)
        # ...and the session key to match (xmlsec1 `--session-key` takes klass-bits).
        msg_enc = req.get("msg_enc", "http://www.w3.org/2001/04/xmlenc#aes256-cbc")
        bits = "128" if "aes128" in msg_enc else "192" if "aes192" in msg_enc else "256"
        idp.sec.encrypt_assertion = functools.partial(idp.sec.encrypt_assertion, key_type="aes-" + bits)
        parsed = idp.parse_authn_request(req["saml_request"], BINDING_HTTP_REDIRECT)
        args = idp.response_args(parsed.message, [BINDING_HTTP_POST])
        resp = idp.create_authn_response(
            identity=req.get("identity", {}),
            userid=req["name_id"],
            name_id=NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=req["name_id"]),
            authn={
                "class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
                "authn_auth": req["idp_entity_id"],
            },
            sign_response=req.get("sign_response", False),
            sign_assertion=req.get("sign_assertion", False),
            encrypt_assertion=req.get("encrypt", False),
            encrypt_assertion_self_contained=True,
            sign_alg=req.get("sign_alg", "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"),
            digest_alg=req.get("digest_alg", "http://www.w3.org/2001/04/xmlenc#sha256"),
            **args,
        )
        json.dump(
            {
                "saml_response": base64.b64encode(str(resp).encode()).decode(),
                "request_id": parsed.message.id,
                "acs_url": args["destination"],
                "metadata": create_metadata_string(None, config=conf).decode(),
            },
            sys.stdout,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
