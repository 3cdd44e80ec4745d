// Portcullis passkeys: runs the WebAuthn ceremony the page's form describes
// (data-passkey="create" or "get", the options in data-options), puts the
// browser's answer into the form's hidden "credential" field and submits the
// form. Nothing is fetched; the server checks everything.
'use strict';
(function () {
  function decode(text) {
    const base64 = text.replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    const raw = atob(padded);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i += 1) out[i] = raw.charCodeAt(i);
    return out.buffer;
  }
  function encode(buffer) {
    const bytes = new Uint8Array(buffer);
    let raw = '';
    for (let i = 0; i < bytes.length; i += 1) raw += String.fromCharCode(bytes[i]);
    return btoa(raw).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function ids(list) {
    return (list || []).map(function (c) {
      return Object.assign({}, c, { id: decode(c.id) });
    });
  }
  async function create(options) {
    const pk = Object.assign({}, options.publicKey);
    pk.challenge = decode(pk.challenge);
    pk.user = Object.assign({}, pk.user, { id: decode(pk.user.id) });
    pk.excludeCredentials = ids(pk.excludeCredentials);
    // A discoverable credential where the authenticator can keep one, so
    // the same passkey also signs in without a password.
    pk.authenticatorSelection = Object.assign({}, pk.authenticatorSelection, {
      residentKey: 'preferred',
      requireResidentKey: false,
    });
    const cred = await navigator.credentials.create({ publicKey: pk });
    return {
      id: cred.id,
      rawId: encode(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: encode(cred.response.attestationObject),
        clientDataJSON: encode(cred.response.clientDataJSON),
      },
      extensions: cred.getClientExtensionResults(),
    };
  }
  async function get(options) {
    const pk = Object.assign({}, options.publicKey);
    pk.challenge = decode(pk.challenge);
    pk.allowCredentials = ids(pk.allowCredentials);
    const cred = await navigator.credentials.get({ publicKey: pk });
    const r = cred.response;
    return {
      id: cred.id,
      rawId: encode(cred.rawId),
      type: cred.type,
      response: {
        authenticatorData: encode(r.authenticatorData),
        clientDataJSON: encode(r.clientDataJSON),
        signature: encode(r.signature),
        userHandle: r.userHandle ? encode(r.userHandle) : null,
      },
      extensions: cred.getClientExtensionResults(),
    };
  }
  function start() {
    document.querySelectorAll('form[data-passkey]').forEach(function (form) {
      const status = form.querySelector('[role=status]');
      form.addEventListener('submit', async function (event) {
        event.preventDefault();
        if (!window.PublicKeyCredential) {
          if (status) status.textContent = 'This browser does not support passkeys.';
          return;
        }
        try {
          if (status) status.textContent = 'Waiting for your passkey…';
          const options = JSON.parse(form.dataset.options);
          const answer = form.dataset.passkey === 'create' ? await create(options) : await get(options);
          form.querySelector('input[name=credential]').value = JSON.stringify(answer);
          form.submit();
        } catch (e) {
          if (status) status.textContent = 'The passkey was not used (' + (e && e.name ? e.name : 'error') + '). You can try again.';
        }
      });
    });
  }
  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
