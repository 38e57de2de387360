package ca

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// RevokeRequest names what to revoke: exactly one of Serial, KeyID, PublicKey or Identity.
type RevokeRequest struct {
	Serial    uint64
	KeyID     string
	PublicKey ssh.PublicKey
	// Identity is a canonical name ("<issuer>|<subject>"), a verified e-mail or a username
	// (IdentityForm). An e-mail or username may name several identities: all are revoked only
	// with AllMatches, else the answer is a conflict that lists them.
	Identity   string
	AllMatches bool
	Reason     string
}

// RevokeResult says what a revocation changed.
type RevokeResult struct {
	Revoked []RevocationEntry
	// Certificates are the inventory records of the certificates revoked by serial or key ID.
	Certificates []Certificate
	// BlockedUntil is when an identity revocation stops refusing new certificates.
	BlockedUntil time.Time
	// Matches are the canonical names of the identities an identity revocation covered.
	Matches []string
	Version uint64
}

// Revoke authenticates the caller, asks the policy (kind "revoke"), and revokes. It is
// idempotent: revoking again changes nothing and answers with what is revoked. The "allowed"
// record is kept before anything is revoked (nothing is revoked unless its record is kept); a
// revocation that then fails is settled by a second record with its real outcome.
func (a *Authority) Revoke(ctx context.Context, token string, req RevokeRequest) (res RevokeResult, err error) {
	id, err := a.auth.Authenticate(ctx, token)
	if err != nil {
		return RevokeResult{}, err
	}
	target, err := revokeTarget(req)
	if err != nil {
		return RevokeResult{}, err
	}
	now := a.now()
	var matches []string
	if req.Identity != "" {
		if matches, err = a.identityMatches(ctx, req.Identity, now); err != nil {
			return RevokeResult{}, err
		}
	}
	// Which identities a name covers is said only to a caller the policy allows to revoke, and
	// the decision's record lists them.
	allowed, err := a.authorizeThen(ctx, id, ActionRevoke, req.Reason, target, func(rec *AuditRecord) error {
		rec.Matches = matches
		// What a rebuild needs to restore this revocation exactly (sshca store rebuild).
		if req.PublicKey != nil {
			rec.PublicKey = keyEntry(req.PublicKey)
		}
		if req.Identity != "" {
			rec.BlockedUntil = now.Add(a.limits.IdentityBlock).UTC()
		}
		if len(matches) > 1 && !req.AllMatches {
			return &Error{Kind: KindConflict, Msg: fmt.Sprintf("identity %q names %d identities; revoke them all with all_matches (sshca revoke --all-matches), or name one as issuer|subject", req.Identity, len(matches)),
				Reasons: matches}
		}
		return nil
	})
	if err != nil {
		return RevokeResult{}, err
	}
	defer func() {
		if err != nil {
			a.settleAllowed(ctx, allowed, err)
		}
	}()
	byCA := map[string][]RevocationEntry{}
	caKeys := map[string]ssh.PublicKey{}
	add := func(caKey ssh.PublicKey, e RevocationEntry) {
		fp := ssh.FingerprintSHA256(caKey)
		byCA[fp] = append(byCA[fp], e)
		caKeys[fp] = caKey
		res.Revoked = append(res.Revoked, e)
	}
	switch {
	case req.Serial != 0 || req.KeyID != "":
		rec, err := a.lookup(ctx, req)
		if err != nil {
			return RevokeResult{}, err
		}
		caKey, err := a.caKeyOf(rec)
		if err != nil {
			return RevokeResult{}, err
		}
		if req.KeyID != "" {
			add(caKey, RevocationEntry{Kind: RevokedKeyID, Value: rec.KeyID, Expiry: rec.ValidBefore})
		} else {
			add(caKey, RevocationEntry{Kind: RevokedSerial, Value: strconv.FormatUint(rec.Serial, 10), Expiry: rec.ValidBefore})
		}
		res.Certificates = []Certificate{rec}
	case req.PublicKey != nil:
		// Every certificate for the key, from either CA, and no new ones: a ban is permanent
		// (zero Expiry) until an administrator lifts it (Unrevoke). One that lapsed after the
		// TTL caps would let the key sign in again once any later change rebuilt the KRL.
		add(a.user.PublicKey(), RevocationEntry{Kind: RevokedKey, Value: keyEntry(req.PublicKey)})
		add(a.host.PublicKey(), RevocationEntry{Kind: RevokedKey, Value: keyEntry(req.PublicKey)})
	case req.Identity != "":
		// Block first, then read the live certificates. Recording a certificate checks the
		// blocks in the same atomic step (CertStore.Record), so once the block is written no
		// certificate of the identity is recorded (nor returned), and the read below finds
		// every one recorded before it: all are revoked.
		res.BlockedUntil = now.Add(a.limits.IdentityBlock).UTC()
		canonical, alias := IdentityForm(req.Identity)
		blocks := append(slices.Clone(matches), canonical+alias) // the form given, too
		for _, name := range dedupe(blocks) {
			if err := a.revocations.BlockIdentity(ctx, name, res.BlockedUntil); err != nil {
				return RevokeResult{}, storeErr("revocation store unavailable", err)
			}
		}
		// An alias was resolved before the block: an identity first recorded under it since
		// then is found now (its record holds the alias index in the same step), and blocked
		// too, whatever its next token says.
		if alias != "" {
			again, err := a.store.ResolveAlias(ctx, alias, now)
			if err != nil {
				return RevokeResult{}, Unavailable("certificate inventory unavailable", err)
			}
			for _, name := range again {
				if slices.Contains(matches, name) {
					continue
				}
				if err := a.revocations.BlockIdentity(ctx, name, res.BlockedUntil); err != nil {
					return RevokeResult{}, storeErr("revocation store unavailable", err)
				}
				matches = append(matches, name)
			}
		}
		res.Matches = matches
		// Records written before identities were canonical name them by e-mail or subject:
		// the name as given finds those until they expire (at most max_host_ttl).
		seen := map[uint64]bool{}
		for _, name := range dedupe(append(slices.Clone(matches), req.Identity)) {
			live, err := a.store.Live(ctx, name, now)
			if err != nil {
				return RevokeResult{}, Unavailable("certificate inventory unavailable", err)
			}
			for _, rec := range live {
				if seen[rec.Serial] {
					continue
				}
				seen[rec.Serial] = true
				caKey, err := a.caKeyOf(rec)
				if err != nil {
					continue // signed by a key no longer in use: it expires on its own
				}
				add(caKey, RevocationEntry{Kind: RevokedSerial, Value: strconv.FormatUint(rec.Serial, 10), Expiry: rec.ValidBefore})
				res.Certificates = append(res.Certificates, rec)
			}
		}
	}
	for fp, entries := range byCA {
		v, err := a.revocations.Revoke(ctx, caKeys[fp], entries)
		if err != nil {
			return RevokeResult{}, storeErr("revocation store unavailable; nothing was revoked in it", err)
		}
		if ssh.FingerprintSHA256(a.user.PublicKey()) == fp {
			res.Version = v
		}
	}
	a.log.InfoContext(ctx, "revoked", "by", id.Name(), "target", target, "reason", req.Reason, "entries", len(res.Revoked))
	return res, nil
}

// UnrevokeRequest names a banned public key to lift, and why.
type UnrevokeRequest struct {
	PublicKey ssh.PublicKey
	Reason    string
}

// UnrevokeResult says what lifting a ban changed: Lifted is false when the key was not banned
// (nothing changed). Version is the user CA key's scope version, as for RevokeResult.
type UnrevokeResult struct {
	Lifted  bool
	Version uint64
}

// Unrevoke lifts the ban of a public key (a `revoke --public-key`): it authenticates the
// caller, asks the policy (kind "revoke", target "unrevoke public_key:<fingerprint>"), keeps
// the "allowed" record with the reason, and removes the key from every CA key's revocation
// scope (each removal goes to its feed, so bastions rebuild their KRL) and from the keys
// refused at signing time. It is idempotent. A compromised CA key is never lifted: there is no
// un-compromise.
func (a *Authority) Unrevoke(ctx context.Context, token string, req UnrevokeRequest) (res UnrevokeResult, err error) {
	id, err := a.auth.Authenticate(ctx, token)
	if err != nil {
		return UnrevokeResult{}, err
	}
	if req.PublicKey == nil {
		return UnrevokeResult{}, Invalid("public_key is required: the banned key to lift")
	}
	target, err := revokeTarget(RevokeRequest{PublicKey: req.PublicKey, Reason: req.Reason})
	if err != nil {
		return UnrevokeResult{}, err
	}
	target = "unrevoke " + target
	fp := ssh.FingerprintSHA256(req.PublicKey)
	allowed, err := a.authorizeThen(ctx, id, ActionRevoke, req.Reason, target, func(*AuditRecord) error {
		return a.notCompromised(ctx, fp, "nothing was lifted")
	})
	if err != nil {
		return UnrevokeResult{}, err
	}
	defer func() {
		if err != nil {
			a.settleAllowed(ctx, allowed, err)
		}
	}()
	versions, err := a.revocations.LiftKey(ctx, req.PublicKey)
	if err != nil {
		return UnrevokeResult{}, storeErr("revocation store unavailable; the ban may be lifted in part: run the command again", err)
	}
	// A compromise that landed between the check above and the lift (two administrators at
	// once) has its ban lifted: read the key ring again, and ban the key again where the lift
	// took it out (its own scope, which also puts it back among the keys refused at signing
	// time, and each scope the lift changed); also when the key ring cannot be read then.
	if cerr := a.notCompromised(ctx, fp, "the lift was undone, the key is banned again"); cerr != nil {
		return UnrevokeResult{}, a.banAgain(ctx, req.PublicKey, versions, cerr)
	}
	res.Lifted = len(versions) > 0
	v, ok := versions[ssh.FingerprintSHA256(a.user.PublicKey())]
	if !ok {
		st, err := a.revocations.State(ctx, a.user.PublicKey())
		if err != nil {
			return UnrevokeResult{}, storeErr("revocation store unavailable", err)
		}
		v = st.Version
	}
	res.Version = v
	a.log.InfoContext(ctx, "ban lifted", "by", id.Name(), "target", target, "reason", req.Reason, "lifted", res.Lifted)
	return res, nil
}

// notCompromised is nil unless the key of fingerprint fp is a compromised CA key, user or host,
// in the key ring as the store holds it now (re-read: a key marked compromised through another
// replica is one this replica's view learns only at its next refresh, and lifting its ban
// meanwhile would let this replica sign with it again, TestUnrevokeCompromisedOnAnotherReplica):
// then a KindConflict error saying so, then done (what became of the ban). A key ring that cannot
// be read is a KindUnavailable error.
func (a *Authority) notCompromised(ctx context.Context, fp, done string) error {
	for _, p := range []Publisher{a.userKeys, a.hostKeys} {
		if rp, ok := p.(RefreshingPublisher); ok {
			if err := rp.Refresh(ctx); err != nil {
				return storeErr("the key ring could not be read, so whether this is a compromised CA key is not known; "+done+": run the command again", err)
			}
		}
		for _, k := range p.Compromised() {
			if ssh.FingerprintSHA256(k) == fp {
				return &Error{Kind: KindConflict, Msg: "this is a compromised CA key: it stays revoked for good; " + done}
			}
		}
	}
	return nil
}

// banAgain revokes key again, for good, in each scope a lift just took it out of (versions, by
// the scope's fingerprint) and, when cause is a conflict (a compromise of key raced that lift),
// in its own scope; also when the key ring could not be read after the lift (cause a 503). It
// answers cause, or why the ban could not be put back.
func (a *Authority) banAgain(ctx context.Context, key ssh.PublicKey, versions map[string]uint64, cause error) error {
	entry := []RevocationEntry{{Kind: RevokedKey, Value: keyEntry(key)}}
	var scopes []ssh.PublicKey
	if KindOf(cause) == KindConflict {
		// A compromised CA key: its own scope too, as the compromise banned it. A key not
		// known to be one (the key ring unread) has no scope of its own to write.
		scopes = append(scopes, key)
	}
	for _, p := range []Publisher{a.userKeys, a.hostKeys} {
		for _, k := range p.Scopes() {
			if _, ok := versions[ssh.FingerprintSHA256(k)]; ok && !slices.ContainsFunc(scopes, func(s ssh.PublicKey) bool { return bytes.Equal(s.Marshal(), k.Marshal()) }) {
				scopes = append(scopes, k)
			}
		}
	}
	for _, sc := range scopes {
		if _, err := a.revocations.Revoke(ctx, sc, entry); err != nil {
			return storeErr("the lift raced a compromise of this CA key (or the key ring could not be read after it), and banning it again failed: if it is compromised, run `sshca keys compromised "+ssh.FingerprintSHA256(key)+"` again", err)
		}
	}
	return cause
}

// UserRevocationStates are the revocation states of every user CA key (active, retired,
// compromised alike), for the KRL bastions enforce.
func (a *Authority) UserRevocationStates(ctx context.Context) ([]RevocationState, error) {
	return a.scopeStates(ctx, a.userKeys.Scopes(), 0)
}

// scopeStates reads the revocation state of each CA key in keys, each with its CA key, into a
// slice with room for extra more.
func (a *Authority) scopeStates(ctx context.Context, keys []ssh.PublicKey, extra int) ([]RevocationState, error) {
	out := make([]RevocationState, 0, len(keys)+extra)
	for _, k := range keys {
		st, err := a.revocations.State(ctx, k)
		if err != nil {
			return nil, storeErr("revocation store unavailable", err)
		}
		if st.CA == nil {
			st.CA = k
		}
		out = append(out, st)
	}
	return out, nil
}

// HostRevocationStates are what clients' RevokedHostKeys and the @revoked lines of known_hosts
// publish: the revocation state of every host CA key (active, next, retired, compromised alike:
// certificates revoked by serial or key ID sit in the scope of the key that signed them, and a
// banned public key in the active one's), then one state without a CA that holds each
// compromised host CA key as a permanent key entry. That last state's version is the number of
// compromised keys, which only grows (there is no un-compromise), so the versions of the
// states still only grow when a key is compromised.
func (a *Authority) HostRevocationStates(ctx context.Context) ([]RevocationState, error) {
	compromised := a.hostKeys.Compromised()
	out, err := a.scopeStates(ctx, a.hostKeys.Scopes(), 1)
	if err != nil {
		return nil, err
	}
	gone := RevocationState{Version: uint64(len(compromised))}
	for _, k := range compromised {
		gone.Entries = append(gone.Entries, RevocationEntry{Kind: RevokedKey, Value: keyEntry(k)})
	}
	return append(out, gone), nil
}

// authenticateReader authorizes a read of the inventory or of revocation state (kind
// "read"), audited as such.
func (a *Authority) authenticateReader(ctx context.Context, token, target string) error {
	return a.Authorize(ctx, token, ActionRead, target)
}

// Authorize authenticates the token and asks the policy whether its identity may do kind to
// target (e.g. ActionAdmin, "promote user CA key").
func (a *Authority) Authorize(ctx context.Context, token string, kind Action, target string) error {
	id, err := a.auth.Authenticate(ctx, token)
	if err != nil {
		return err
	}
	return a.authorize(ctx, id, kind, "", target)
}

// AuthorizeThen is Authorize followed by act, once the decision's "allowed" record is kept
// (nothing is done unless its record is kept). When act fails, a second record settles the
// decision with act's real outcome (e.g. unavailable), so the audit log never shows as done
// an action that failed.
func (a *Authority) AuthorizeThen(ctx context.Context, token string, kind Action, target string, act func(context.Context) error) error {
	id, err := a.auth.Authenticate(ctx, token)
	if err != nil {
		return err
	}
	allowed, err := a.authorizeThen(ctx, id, kind, "", target, nil)
	if err != nil {
		return err
	}
	if err := act(ctx); err != nil {
		a.settleAllowed(ctx, allowed, err)
		return err
	}
	return nil
}

// AuthorizeThenKeep is AuthorizeThen whose act also answers what it left, kept as a second
// record once act succeeded: the "allowed" record, at the time act ended, with outcome
// OutcomeDone and done's fields (Keyring for a key-ring change), so that the audit trail can
// restore the result (`sshca store rebuild`). The action is done either way: a failure to keep
// that record is logged, and the next change's record holds the whole key ring again.
func (a *Authority) AuthorizeThenKeep(ctx context.Context, token string, kind Action, target string, act func(context.Context) (AuditRecord, error)) error {
	id, err := a.auth.Authenticate(ctx, token)
	if err != nil {
		return err
	}
	allowed, err := a.authorizeThen(ctx, id, kind, "", target, nil)
	if err != nil {
		return err
	}
	done, err := act(ctx)
	if err != nil {
		a.settleAllowed(ctx, allowed, err)
		return err
	}
	rec := allowed
	rec.Time = a.now().UTC()
	rec.Outcome, rec.Reasons = OutcomeDone, nil
	rec.Keyring = done.Keyring
	if a.audit != nil {
		if err := a.audit.Append(ctx, rec); err != nil {
			a.log.ErrorContext(ctx, "audit record lost", "action", rec.Action, "outcome", rec.Outcome, "identity", rec.Identity, "err", err)
		}
	}
	return nil
}

// settleAllowed keeps the second record of an action that failed after its "allowed" record
// was kept: the same decision (action, identity, target, reason, policy revision) at the time
// of the failure, with the failure's outcome and caller-safe message; its cause is logged by
// the transport, never recorded.
func (a *Authority) settleAllowed(ctx context.Context, allowed AuditRecord, err error) {
	rec := allowed
	rec.Time = a.now().UTC()
	rec.Outcome, rec.Reasons = "", nil
	a.settle(ctx, &rec, err)
}

// identityMatches resolves a name given to revoke-by-identity to canonical names: itself when
// it is one, else the identities recorded under the alias (none is not an error: the alias is
// still blocked).
func (a *Authority) identityMatches(ctx context.Context, name string, now time.Time) ([]string, error) {
	canonical, alias := IdentityForm(name)
	if canonical != "" {
		return []string{canonical}, nil
	}
	ids, err := a.store.ResolveAlias(ctx, alias, now)
	if err != nil {
		return nil, Unavailable("certificate inventory unavailable", err)
	}
	return ids, nil
}

// authorize asks the policy whether id may do kind (revoke, admin) to target, and keeps the
// decision in the audit log: an allowed action goes ahead only once its record is kept.
func (a *Authority) authorize(ctx context.Context, id Identity, kind Action, reason, target string) error {
	_, err := a.authorizeThen(ctx, id, kind, reason, target, nil)
	return err
}

// authorizeThen is authorize with a check run once the policy allows and before the record is
// kept: it may add to the record, and an error it returns settles the record with it. It
// returns the "allowed" record it kept, for settleAllowed should the action then fail.
func (a *Authority) authorizeThen(ctx context.Context, id Identity, kind Action, reason, target string, check func(*AuditRecord) error) (_ AuditRecord, err error) {
	rec := a.auditRecord(kind, id)
	rec.Reason, rec.Target = reason, target
	in := PolicyInput{Kind: kind, Identity: id, Now: a.now().UTC().Format(time.RFC3339),
		Request: PolicyRequest{Principals: []string{}, Reason: reason, Target: target}}
	fillDefaults(&in.Identity)
	if _, err := a.decide(ctx, &rec, in, "policy denied the request"); err != nil {
		return rec, err
	}
	if check != nil {
		if err := check(&rec); err != nil {
			a.settle(ctx, &rec, err)
			return rec, err
		}
	}
	rec.Outcome = "allowed"
	return rec, a.keep(ctx, rec)
}

func revokeTarget(req RevokeRequest) (string, error) {
	var targets []string
	if req.Serial != 0 {
		targets = append(targets, "serial:"+strconv.FormatUint(req.Serial, 10))
	}
	if req.KeyID != "" {
		targets = append(targets, "key_id:"+req.KeyID)
	}
	if req.PublicKey != nil {
		targets = append(targets, "public_key:"+ssh.FingerprintSHA256(req.PublicKey))
	}
	if req.Identity != "" {
		targets = append(targets, "identity:"+req.Identity)
	}
	if len(targets) != 1 {
		return "", Invalid("name exactly one of serial, key_id, public_key or identity (got %d)", len(targets))
	}
	if strings.TrimSpace(req.Reason) == "" {
		return "", Invalid("reason is required: say why (it is recorded)")
	}
	if len(req.Reason) > 1024 {
		return "", Invalid("reason is longer than 1024 bytes")
	}
	return targets[0], nil
}

// lookup finds the inventory record a serial or key ID names.
func (a *Authority) lookup(ctx context.Context, req RevokeRequest) (Certificate, error) {
	serial := req.Serial
	if req.KeyID != "" {
		// Our key IDs end in "#<serial>".
		i := strings.LastIndexByte(req.KeyID, '#')
		n, err := strconv.ParseUint(req.KeyID[i+1:], 10, 64)
		if i < 0 || err != nil {
			return Certificate{}, &Error{Kind: KindNotFound, Msg: fmt.Sprintf("key_id %q was not issued by this CA (ours end in #<serial>)", req.KeyID)}
		}
		serial = n
	}
	rec, ok, err := a.store.Get(ctx, serial)
	if err != nil {
		return Certificate{}, Unavailable("certificate inventory unavailable", err)
	}
	// An expired certificate needs no revocation: say so whether or not the store has dropped
	// its record yet (Redis expires it on time; miniredis under sshca dev and memory keep it).
	if !ok || (req.KeyID != "" && rec.KeyID != req.KeyID) || !rec.ValidBefore.After(a.now()) {
		return Certificate{}, &Error{Kind: KindNotFound, Msg: "no live certificate with that serial or key ID in the inventory (expired ones need no revocation)"}
	}
	return rec, nil
}

func (a *Authority) caKeyOf(rec Certificate) (ssh.PublicKey, error) {
	for _, k := range append(a.UserCAKeys(), a.HostCAKeys()...) {
		if ssh.FingerprintSHA256(k) == rec.CAFingerprint {
			return k, nil
		}
	}
	return nil, &Error{Kind: KindNotFound, Msg: "the certificate was signed by a CA key no longer in use"}
}

func keyEntry(k ssh.PublicKey) string { return base64Std(k.Marshal()) }

func orDefault(reasons []string) []string {
	if len(reasons) == 0 {
		return []string{"the policy grants nothing for this request"}
	}
	return reasons
}
