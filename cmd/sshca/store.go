package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// rebuildTargetPrefix starts the target of a rebuild's own audit record, followed by the new
// generation's number: a later rebuild reads it as a witness of the generations used.
const rebuildTargetPrefix = "store rebuild generation "

// rebuildFlags are the inputs of `sshca store rebuild`.
type rebuildFlags struct {
	redis         redisTarget
	auditKey      string
	archives      []string
	userCA        string
	hostCA        string
	otherCAs      []string
	aboveVersion  uint64
	identityBlock time.Duration
	tokenLifetime time.Duration
	keyringKMS    string
	lostStripes   []int
	invShards     int
}

func newStoreCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "store", Short: "The Redis store: rebuild it after it lost its state, migrate it after an upgrade"}
	var f rebuildFlags
	rebuild := &cobra.Command{
		Use:   "rebuild (--redis URL [--cluster | --sentinel-master NAME] | --config FILE) --audit-key FILE --user-ca FILE --host-ca FILE [--archive FILE]... [--above-version N]",
		Short: "Restore revocations, bans, identity blocks and the live inventory from the verified audit trail, and start a new generation",
		Long: `Restore a store that lost its state (an empty restart, a restore from an old snapshot, a
failover to a lagging replica: the CA then answers "revocation state lost") from the verified
audit trail: the archives given with --archive, in order, then the chain in Redis.

It restores the live certificates (from the records of issuance), the serials and key IDs
revoked, the public keys banned and not lifted since, the identities still blocked and the
certificates their revocation covered, and the key ring as the last key-ring change left it
(with the user CA keys published to bastions, and compromised ones revoked), the access
requests still kept (with their approvals, decisions, reviews and serials; the certificates of
those cancelled or revoked are revoked again), and lists every record it could not restore,
with why. Audit records keep KMS URIs without their PIN: give
--keyring-kms (keyring.kms) to put it back.
The spent single-use tokens cannot be restored: tokens issued (iat) before the rebuild are
refused (they may have been spent before the loss), and tokens without iat when they expire
before now plus --token-lifetime.

It then starts a new generation above every one the store shows and above --above-version (a
bastion's installed KRL version, from its status): CA replicas that found the loss serve
again, and bastions install the KRLs it publishes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRebuild(cmd.Context(), f, cmd.Flags(), cmd.OutOrStdout(), time.Now)
		},
	}
	fl := rebuild.Flags()
	addRedisTargetFlags(fl, &f.redis, "", "of the store")
	fl.StringVar(&f.auditKey, "audit-key", "", "the audit key (audit.key_file of the CA): the trail is verified with it")
	fl.StringArrayVar(&f.archives, "archive", nil, "an audit archive (sshca audit archive --out), oldest first; repeat for several")
	fl.StringVar(&f.userCA, "user-ca", "", "the active user CA public key (a file as GET /v1/ca/user.pub serves)")
	fl.StringVar(&f.hostCA, "host-ca", "", "the active host CA public key (a file with one public key line)")
	fl.StringArrayVar(&f.otherCAs, "ca", nil, "another CA public key whose certificates may still be live (a retired key); repeat for several")
	fl.Uint64Var(&f.aboveVersion, "above-version", 0, "the newest KRL version a bastion holds (sshca bastion status): the new generation is above its generation")
	fl.DurationVar(&f.identityBlock, "identity-block", ca.DefaultLimits.IdentityBlock, "limits.identity_block of the CA: how long an identity revocation recorded without its end blocks")
	fl.DurationVar(&f.tokenLifetime, "token-lifetime", identity.DefaultMaxTokenLifetime, "the longest lifetime of the tokens the CA accepts (oidc max_token_lifetime, or the identity provider's shorter one): single-use tokens expiring before now plus this are refused")
	fl.StringVar(&f.keyringKMS, "keyring-kms", "", "keyring.kms of the CA (with its PIN, if any): the audit records keep KMS URIs with the PIN redacted")
	fl.IntSliceVar(&f.lostStripes, "lost-stripe", nil, "a stripe of the audit chain lost with its keys (a Redis master that came back empty): what other stripes' checkpoints say of it is set aside, and its records since the last archive are not restored; repeat for several")
	fl.IntVar(&f.invShards, "inventory-shards", 1, "inventory.shards of the CA: the live certificates are restored into that many shards, and every shard's generation mark is renewed (also when the store lost its count of shards)")
	cmd.AddCommand(rebuild, newStoreMigrateCommand())
	return cmd
}

// readCAKey reads the first public key of an authorized_keys-form file.
func readCAKey(flag, path string) (ssh.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, fmt.Errorf("--%s: %s holds no public key line: %w", flag, path, err)
	}
	return k, nil
}

// runRebuild is `sshca store rebuild`: verify the trail, restore, start a new generation.
// fs, when not nil, tells an explicit --redis from the environment's.
func runRebuild(ctx context.Context, f rebuildFlags, fs *pflag.FlagSet, out io.Writer, now func() time.Time) error {
	var missing []string
	if !f.redis.given() {
		missing = append(missing, "--redis URL or --config FILE (the store to rebuild)")
	}
	if f.auditKey == "" {
		missing = append(missing, "--audit-key FILE (the trail is trusted only once verified with it)")
	}
	if f.userCA == "" || f.hostCA == "" {
		missing = append(missing, "--user-ca FILE and --host-ca FILE (the active CA public keys)")
	}
	if f.tokenLifetime <= 0 {
		missing = append(missing, "--token-lifetime must be positive")
	}
	if len(missing) > 0 {
		return errors.New("store rebuild: " + strings.Join(missing, "; "))
	}
	key, err := readAuditKey(f.auditKey)
	if err != nil {
		return fmt.Errorf("--audit-key: %w", err)
	}
	restore := &store.Restore{IdentityBlock: f.identityBlock}
	if f.keyringKMS != "" {
		restore.KMSURIs = map[string]string{kms.Redact(f.keyringKMS): f.keyringKMS}
	}
	if restore.UserCA, err = readCAKey("user-ca", f.userCA); err != nil {
		return err
	}
	if restore.HostCA, err = readCAKey("host-ca", f.hostCA); err != nil {
		return err
	}
	for _, p := range f.otherCAs {
		k, err := readCAKey("ca", p)
		if err != nil {
			return err
		}
		restore.OtherCAs = append(restore.OtherCAs, k)
	}
	rdb, err := f.redis.open(ctx, fs, 10*time.Second, nil, nil)
	if err != nil {
		return fmt.Errorf("store rebuild: %w", err)
	}
	defer rdb.Close()
	al := audit.New(rdb, audit.Options{Key: key, LostStripes: f.lostStripes})

	// The trail: each record once, archives first. A chain in Redis restored from a snapshot
	// may repeat records an archive holds (same stripe, sequence number and MAC): those are
	// skipped. The records are restored in time order once all are read: a ban before its
	// lift, whichever stripes of the chain they are in (audit.InTimeOrder), each with its
	// stripe, since records of different stripes are only as well ordered as the replicas'
	// clocks (store.RestoreClockSkew).
	var gen uint16 // the newest generation a rebuild or an archive recorded
	type place struct {
		stripe int
		seq    uint64
	}
	seen := map[place]string{}
	var trail []audit.Entry
	add := func(e audit.Entry) {
		if mac, ok := seen[place{e.Stripe, e.Seq}]; ok && mac == e.MAC {
			return
		}
		seen[place{e.Stripe, e.Seq}] = e.MAC
		if e.Record.Store != nil { // an archive's record of the store: a generation it had
			gen = max(gen, e.Record.Store.Epoch)
		}
		if rest, ok := strings.CutPrefix(e.Record.Target, rebuildTargetPrefix); ok && e.Record.Action == ca.ActionAdmin {
			if n, err := strconv.ParseUint(strings.Fields(rest + " ")[0], 10, 16); err == nil {
				gen = max(gen, uint16(n))
			}
			return
		}
		trail = append(trail, e)
	}
	var last audit.ArchiveReport
	fromArchives := 0
	for i, p := range f.archives {
		// The last archive given is checked against the file the last archive run wrote, as
		// Redis records it when it still does (gone, emptied or cut back: refused).
		fh, err := openArchiveToVerify(ctx, al, p, i == len(f.archives)-1)
		if err != nil {
			return fmt.Errorf("--archive: %w", err)
		}
		ar, err := al.VerifyArchive(fh, add)
		fh.Close()
		if err != nil {
			return fmt.Errorf("--archive %s does not verify, so nothing was rebuilt: %w", p, err)
		}
		if ar.Records+ar.Bases > 0 {
			last = ar
		}
		fromArchives += ar.Records
		fmt.Fprintf(out, "archive %s: %s verified, %s\n", p, plural(ar.Records, "audit record"), archiveSpan(ar))
		if w := unsealed(ar); w != "" {
			fmt.Fprintln(out, w)
		}
	}
	// The chain in Redis: read into a list first, since a chain that does not go on from the
	// archive (the log was lost with the store, and started again) is still read, after a
	// warning, and only a chain that verifies is used.
	var inRedis []audit.Entry
	collect := func(e audit.Entry) { inRedis = append(inRedis, e) }
	rep, err := al.VerifyAfter(ctx, last, collect)
	detached := false
	// An archive run interrupted before it trimmed left records in both the archive and
	// Redis: nothing is lost, and add takes each once.
	var unfinished *audit.UnfinishedArchiveError
	overlap := errors.As(err, &unfinished)
	if err != nil && len(f.archives) > 0 {
		inRedis = nil
		rep, err = al.Verify(ctx, collect)
		detached = err == nil
	}
	var cut *audit.StripeCutError
	if errors.As(err, &cut) {
		return fmt.Errorf("the audit chain in Redis does not verify, so nothing was rebuilt: %w; if stripe %d's keys were lost with a Redis master (not cut by someone), run again with --lost-stripe %d: what the other stripes hold is restored, and stripe %d's records since the last archive are not", err, cut.Stripe, cut.Stripe, cut.Stripe)
	}
	if err != nil {
		return fmt.Errorf("the audit chain in Redis does not verify, so nothing was rebuilt: %w", err)
	}
	for _, i := range f.lostStripes {
		fmt.Fprintf(out, "WARNING: stripe %d of the audit chain was taken as lost (--lost-stripe; %d heads named by checkpoints set aside): the records it kept since the last archive are gone, and what they did cannot be restored; revoke again what was revoked since\n", i, rep.SetAside)
	}
	if detached && overlap {
		fmt.Fprintf(out, "the audit chain in Redis overlaps the last archive (%v): the records in both are restored once\n", unfinished)
	} else if detached {
		repeated := 0
		for _, e := range inRedis {
			if seen[place{e.Stripe, e.Seq}] == e.MAC {
				repeated++
			}
		}
		if repeated == len(inRedis) {
			fmt.Fprintf(out, "the audit chain in Redis is an older part of the archived chain (the store was restored from a copy): nothing in it is new\n")
		} else {
			fmt.Fprintf(out, "WARNING: the audit chain in Redis does not go on from the last archive (record %d): the records written after that archive and before the loss are gone, and what they did cannot be restored; revoke again what was revoked since\n", last.LastSeq)
		}
	}
	for _, e := range inRedis {
		add(e)
	}
	for _, e := range audit.InTimeOrder(trail) {
		restore.AddFrom(e.Stripe, e.Record)
	}
	fmt.Fprintf(out, "audit chain in Redis: %s verified (from record %d)\n", plural(rep.Records, "audit record"), rep.BaseSeq+1)

	start := now()
	if f.invShards < 0 || f.invShards > store.MaxInventoryShards {
		return fmt.Errorf("store rebuild: --inventory-shards %d: want 1 up to %d (inventory.shards of the CA)", f.invShards, store.MaxInventoryShards)
	}
	// Every stripe walked (and every one given as lost) gets its mark renewed by the switch
	// below, also one whose keys are gone: the replicas that saw its mark expect one.
	stripes := len(rep.Stripes)
	for _, i := range f.lostStripes {
		stripes = max(stripes, i+1)
	}
	st := store.NewRedis(rdb, store.RedisOptions{Now: now, InventoryShards: f.invShards, AuditStripes: stripes})
	res, err := restore.Apply(ctx, st, start)
	if err != nil {
		return fmt.Errorf("store rebuild: restoring (run it again: every step is idempotent): %w", err)
	}
	refuseUntil := start.Add(f.tokenLifetime)
	if err := st.RefuseTokens(ctx, start, refuseUntil); err != nil {
		return err
	}
	floor, _ := revocation.SplitVersion(f.aboveVersion)
	g, err := st.NextGeneration(ctx, max(floor, gen))
	if err != nil {
		return err
	}
	if err := st.SwitchGeneration(ctx, g, append([]ssh.PublicKey{restore.UserCA, restore.HostCA}, restore.OtherCAs...)...); err != nil {
		return err
	}
	summary := fmt.Sprintf("restored %d revocations (%d lifts applied, %d identity names blocked), %d live certificates, %d access requests; %d revocations had expired; could not restore %d",
		res.Revocations, res.Lifts, res.Blocks, res.Certificates, res.AccessRequests, res.Expired, len(restore.Skipped))
	if err := al.Append(ctx, ca.AuditRecord{Time: start.UTC(), Action: ca.ActionAdmin, Outcome: "allowed", Identity: "sshca store rebuild",
		Target: rebuildTargetPrefix + strconv.Itoa(int(g.Epoch)) + " " + g.ID, Reasons: []string{summary}}); err != nil {
		fmt.Fprintf(out, "WARNING: the rebuild's own audit record was not kept: %v\n", err)
	}

	fmt.Fprintf(out, "read %s (%d from archives)\n", plural(restore.Records, "audit record"), fromArchives)
	fmt.Fprintf(out, "restored: %s, %s lifted, %s blocked, %s", plural(res.Revocations, "revocation"), plural(res.Lifts, "ban"),
		plural(res.Blocks, "identity name"), plural(res.Certificates, "live certificate"))
	if res.Assumed > 0 {
		fmt.Fprintf(out, " (%d recorded without their CA key: taken as signed by the active key of their kind)", res.Assumed)
	}
	fmt.Fprintf(out, "\nexpired, nothing to restore: %s\n", plural(res.Expired, "revocation"))
	if res.KeyringVersion > 0 {
		fmt.Fprintf(out, "key ring: restored at version %d with %s, as the last recorded key-ring change left it\n", res.KeyringVersion, plural(res.KeyringKeys, "key"))
	} else {
		fmt.Fprintf(out, "key ring: unchanged (no recorded key-ring change, or the store holds the same keys)\n")
	}
	fmt.Fprintf(out, "access requests: %d restored (pending, in their window, or ended within %s)\n", res.AccessRequests, ca.AccessRequestRetention)
	fmt.Fprintf(out, "could not restore: %d\n", len(restore.Skipped))
	for _, s := range restore.Skipped {
		fmt.Fprintf(out, "  %s %s: %s\n", s.Time.UTC().Format(time.RFC3339), s.Target, s.Why)
	}
	if res.NoAliases > 0 {
		fmt.Fprintf(out, "%d live certificates were recorded without their identity's e-mail and username: the inventory finds them by canonical name (issuer|subject) only\n", res.NoAliases)
	}
	fmt.Fprintf(out, "single-use tokens issued before %s are refused (the tokens spent before the loss are not known); those without iat, when they expire before %s\n",
		start.UTC().Format(time.RFC3339), refuseUntil.UTC().Format(time.RFC3339))
	fmt.Fprintf(out, "new generation %d (%s): KRL versions are now above %d; CA replicas serve again, bastions install the rebuilt KRL\n",
		g.Epoch, g.ID, revocation.ComposeVersion(g.Epoch, 0))
	return nil
}
