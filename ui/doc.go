// Package ui is the web console for approvers under /ui/ (issue 17 §4): server-rendered pages
// (html/template, embedded templates and one CSS file, no script) to sign in with the
// configured OIDC issuer (authorization code + PKCE), list the pending access requests the
// signed-in user may decide, approve or deny one with a reason, read one request's history and
// see who holds access now. The console acts with the signed-in user's ID token, kept in a
// server-side session and never in a URL or a cookie, through the same domain calls as the API
// (it declares the Requests interface that *ca.Authority implements), so it grants nothing the
// API would not.
package ui
