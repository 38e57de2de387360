package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/identity/devissuer"
	"github.com/sshca/sshca/internal/bodylimit"
)

// benchOptions are the flags of `sshca bench`.
type benchOptions struct {
	server      string
	concurrency int
	rate        string
	duration    time.Duration
	tlsCA       string
	serverPIDs  []int
	state       string
	// tokenURL is the development issuer's POST /dev/token (default: at the server's
	// scheme://host); another URL when the server is `sshca serve` trusting a `sshca dev`
	// issuer (go tool task bench-serve-tls).
	tokenURL string
	// pprofURL and pprofOut: a CPU profile of the server over the measured window, from its
	// /debug/pprof/profile (diag_pprof), written to pprofOut.
	pprofURL, pprofOut string
	// selfProfile: a CPU profile of the generator itself over the measured window (its
	// share of the machine is part of what an open-loop run on the same cores measures).
	selfProfile string
	tokens      int
	// identityRate and identityBurst are the server's per-identity limit (limits.rate.per_identity,
	// identity_burst); addressRate and addressBurst its per-address limit (per_address, burst).
	identityRate, addressRate   float64
	identityBurst, addressBurst int
	sourceAddrs                 int
	// http1 drives the server over HTTP/1.1 (one request per connection at a time, as
	// `sshca login` and most one-shot clients do) rather than HTTP/2.
	http1 bool
	// startAt, when not zero, is when the window starts (Unix seconds), so that several
	// generators (one per replica, deploy/bench/cluster.sh) share one window.
	startAt int64
	// concurrencySet says --concurrency was given; with --rate it is otherwise rate/10
	// (a 100 ms latency budget), at least 8 and at most 512.
	concurrencySet bool
}

func newBenchCommand() *cobra.Command {
	o := benchOptions{}
	cmd := &cobra.Command{
		Use:   "bench --server URL [--concurrency N | --rate R/s] --duration D [--tls-ca FILE] [--server-pid PID,...] [--state DIR]",
		Short: "Load generator: drive POST /v1/certs/user of a running `sshca dev` with pre-minted tokens and report certs/s, latency and CPU per certificate",
		Long: `bench pre-mints one unused token per request from the development issuer of a running
` + "`sshca dev`" + ` (POST /dev/token with the secret from --state), generates an Ed25519 key per request,
then for --duration drives POST /v1/certs/user over keep-alive connections opened before the
window (HTTP/2 with TLS, or HTTP/1.1 with --http1: one connection per request in flight), closed loop (--concurrency requests in flight) or open loop (--rate R/s, latency measured from
each request's intended send time). After the window it checks every certificate (the submitted
key, a user certificate, signed by a key of /v1/ca/user.pub) and prints as its last line
  certs/s: N  p50: X ms  p99: Y ms  errors: E  server_cpu_us_per_cert: C
where C is the CPU time (user+system, /proc/PID/stat) of the --server-pid processes, summed,
per certificate issued ("n/a" without --server-pid). Requests are spread over enough identities
(and, on a loopback server, source addresses 127.0.0.2...) not to meet the rate limits.
A progress line goes to stderr every second. The exit status is 1 when any request failed.
Long runs (more than 100,000 tokens, such as a 10-minute soak) spool their tokens to a
temporary file and stream it during the window, reuse 100,000 keys in turn and verify a
sample of the certificates; windows of 5 minutes or more mint tokens that expire
2×duration+30m after minting (the development issuer's default is 10 minutes).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.concurrencySet = cmd.Flags().Changed("concurrency")
			return runBench(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.server, "server", "http://127.0.0.1:8080", "base URL of the server (its /v1/certs/user); tokens come from /dev/token at the same scheme://host")
	f.IntVar(&o.concurrency, "concurrency", 8, "requests in flight (closed loop); with --rate, the most in flight at once (default there: rate/10, 8 to 512)")
	f.StringVar(&o.rate, "rate", "", "open loop: requests per second, such as 500 or 500/s (latency from the intended send time)")
	f.DurationVar(&o.duration, "duration", 10*time.Second, "length of the measured window")
	f.StringVar(&o.tlsCA, "tls-ca", "", "PEM file of the CA that signed the server's TLS certificate")
	f.IntSliceVar(&o.serverPIDs, "server-pid", nil, "processes whose CPU is measured (the server and its redis-server), comma-separated")
	f.StringVar(&o.state, "state", defaultStateDir(), "state directory of sshca dev (holds "+devSecretFile+")")
	f.StringVar(&o.tokenURL, "token-url", "", "the development issuer's POST /dev/token URL (default: /dev/token at the --server's scheme://host), e.g. that of the sshca dev a sshca serve under test trusts")
	f.StringVar(&o.pprofURL, "pprof-url", "", "the server's CPU profile endpoint (http://DIAG/debug/pprof/profile with diag_pprof on): profile the measured window, less its last second, into --pprof-out")
	f.StringVar(&o.pprofOut, "pprof-out", "server.pprof", "file for the profile that --pprof-url fetches")
	f.StringVar(&o.selfProfile, "self-pprof-out", "", "write a CPU profile of this generator over the measured window to this file (what the load generator itself spends, on the same cores as the server)")
	f.IntVar(&o.tokens, "tokens", 0, "tokens to pre-mint, one per request (0: rate×duration with --rate, else 3000/s×duration); the window ends early when they run out")
	f.Float64Var(&o.identityRate, "identity-rate", 1, "the server's limits.rate.per_identity, requests per second")
	f.IntVar(&o.identityBurst, "identity-burst", 20, "the server's limits.rate.identity_burst")
	f.Float64Var(&o.addressRate, "address-rate", 20, "the server's limits.rate.per_address, requests per second")
	f.IntVar(&o.addressBurst, "address-burst", 100, "the server's limits.rate.burst")
	f.Int64Var(&o.startAt, "start-at", 0, "start the measured window at this Unix time (seconds) rather than once the tokens are minted, so that several bench processes share one window (0: at once)")
	f.BoolVar(&o.http1, "http1", false, "HTTP/1.1 over TLS (a connection per request in flight, as one-shot clients such as sshca login use) instead of HTTP/2")
	f.IntVar(&o.sourceAddrs, "source-addresses", 0, "source addresses 127.0.0.2... to spread a loopback server's per-address limit over (0: as many as the limit needs, at most 250; 1: the default address)")
	return cmd
}

// benchResult is one request's outcome: latency from its (intended) send time, and the
// answer kept for verification after the window.
type benchResult struct {
	latency time.Duration
	status  int
	err     error
	body    []byte
	// at is when the answer came: its certificate is checked as valid then (a long run's
	// first certificates have expired by the end of its window).
	at time.Time
}

// parseRate reads "500", "500/s" or "500/S" as requests per second.
func parseRate(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSuffix(s, "/s"), "/S"), 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) {
		return 0, fmt.Errorf("bench: --rate %q must be a positive number of requests per second, such as 500 or 500/s", s)
	}
	return v, nil
}

func runBench(ctx context.Context, o benchOptions, out, progress io.Writer) error {
	var rate float64
	if o.rate != "" {
		r, err := parseRate(o.rate)
		if err != nil {
			return err
		}
		rate = r
	}
	switch {
	case o.duration <= 0:
		return fmt.Errorf("bench: --duration %s must be positive, such as 10s", o.duration)
	case o.concurrency < 1:
		return fmt.Errorf("bench: --concurrency %d must be at least 1", o.concurrency)
	case o.identityRate <= 0 || o.identityBurst < 1 || o.addressRate <= 0 || o.addressBurst < 1:
		return errors.New("bench: --identity-rate, --identity-burst, --address-rate and --address-burst must be positive")
	}
	base := strings.TrimRight(o.server, "/")
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("bench: --server %q must be an http:// or https:// URL such as http://127.0.0.1:8080", o.server)
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.tlsCA != "" {
		pem, err := os.ReadFile(o.tlsCA)
		if err != nil {
			return fmt.Errorf("bench: --tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("bench: --tls-ca %s holds no PEM certificate", o.tlsCA)
		}
		tlsConf.RootCAs = pool
	}
	secret, err := readDevSecret(o.state)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}

	n := o.tokens
	if n <= 0 {
		if rate > 0 {
			n = int(math.Ceil(rate * o.duration.Seconds()))
		} else {
			n = int(math.Ceil(3000 * o.duration.Seconds()))
		}
	}
	// Each identity may make identityBurst + identityRate×duration requests in the window;
	// tokens go to identities round-robin, so each one's requests are spread evenly over it.
	// Only half the refill is counted: the last requests come before the window's end.
	// A run's identities and source addresses are its own (a random tag, a random second
	// octet), so the buckets an earlier run drained do not refuse this one.
	var tagb [3]byte
	if _, err := rand.Read(tagb[:]); err != nil {
		return err
	}
	tag := fmt.Sprintf("%x", tagb[:])
	perIdentity := float64(o.identityBurst) + o.identityRate*o.duration.Seconds()/2
	identities := max(1, int(math.Ceil(float64(n)/perIdentity)))
	addrs := []net.IP{nil}
	loopback := false
	if ip := net.ParseIP(u.Hostname()); (ip != nil && ip.To4() != nil && ip.IsLoopback()) || u.Hostname() == "localhost" {
		loopback = true
	}
	perAddress := float64(o.addressBurst) + o.addressRate*o.duration.Seconds()/2
	wantAddrs := max(1, int(math.Ceil(float64(n)/perAddress)))
	if loopback && o.sourceAddrs != 1 {
		k := o.sourceAddrs
		if k <= 0 {
			k = min(wantAddrs, 250)
		}
		addrs = addrs[:0]
		for i := range min(k, 250) {
			addrs = append(addrs, net.IPv4(127, 1+tagb[0]%254, tagb[1], byte(i+2)))
		}
	}
	fmt.Fprintf(out, "bench: %d tokens for %d identities (sub bench-%s-0...bench-%[3]s-%d: at most %.0f requests each, under the per-identity limit of %g/s, burst %d)\n",
		n, identities, tag, identities-1, math.Ceil(perIdentity), o.identityRate, o.identityBurst)
	switch {
	case len(addrs) > 1 || (loopback && addrs[0] != nil):
		fmt.Fprintf(out, "bench: %d source addresses %s... (per-address limit %g/s, burst %d)\n", len(addrs), addrs[0], o.addressRate, o.addressBurst)
		if len(addrs) < wantAddrs {
			fmt.Fprintf(out, "bench: warning: %d requests need %d source addresses under the per-address limit; raise limits.rate.per_address on the server\n", n, wantAddrs)
		}
	case wantAddrs > 1:
		fmt.Fprintf(out, "bench: warning: one source address; %d requests exceed the per-address limit (%g/s, burst %d): raise limits.rate.per_address on the server\n", n, o.addressRate, o.addressBurst)
	}

	// One transport per source address, each keeping its connections alive.
	transports := make([]*http.Transport, len(addrs))
	clients := make([]*http.Client, len(addrs))
	for i, a := range addrs {
		d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
		if a != nil {
			d.LocalAddr = &net.TCPAddr{IP: a}
		}
		transports[i] = &http.Transport{
			DialContext: d.DialContext, TLSClientConfig: tlsConf.Clone(), ForceAttemptHTTP2: !o.http1,
			MaxIdleConns: 0, MaxIdleConnsPerHost: o.concurrency, IdleConnTimeout: 90 * time.Second,
		}
		if o.http1 {
			// A non-nil empty map turns HTTP/2 off (net/http's documented switch).
			transports[i].TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		clients[i] = &http.Client{Transport: transports[i], Timeout: 30 * time.Second}
	}
	defer func() {
		for _, t := range transports {
			t.CloseIdleConnections()
		}
	}()

	// Up front: the keys, the request bodies and the tokens. A long run (a soak) cycles
	// through a pool of keys, spools its tokens to a file and verifies a sample of the
	// certificates, so the generator's own memory stays flat (benchLongRun).
	t0 := time.Now()
	long := newBenchLongRun(n)
	keys := make([]ssh.PublicKey, long.keys)
	bodies := make([][]byte, long.keys)
	for i := range long.keys {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		k, err := ssh.NewPublicKey(pub)
		if err != nil {
			return err
		}
		keys[i] = k
		bodies[i], _ = json.Marshal(client.CertRequest{PublicKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))), TTL: "5m"})
	}
	tokenURL := o.tokenURL
	if tokenURL == "" {
		tokenURL = u.Scheme + "://" + u.Host + "/dev/token"
	}
	// Tokens expire (the development issuer's default lifetime is 10 minutes): a window
	// longer than that, plus the minutes its tokens take to mint, would be refused at its
	// end, so a long window's tokens say their own exp.
	var exp int64
	if o.duration >= benchLongWindow {
		exp = time.Now().Add(2*o.duration + 30*time.Minute).Unix()
	}
	tokens, err := mintBenchTokens(ctx, tokenURL, secret, n, identities, tag, exp, tlsConf, long.spool, progress)
	if err != nil {
		return fmt.Errorf("bench: minting tokens: %w", err)
	}
	defer tokens.close()
	fmt.Fprintf(out, "bench: minted %d tokens and %d keys in %s\n", n, long.keys, time.Since(t0).Round(time.Millisecond))
	if long.spool {
		fmt.Fprintf(out, "bench: long run: tokens streamed from a file, %d keys reused in turn, every %d. certificate verified\n", long.keys, long.sampleEvery)
	}
	if err := tokens.start(); err != nil {
		return fmt.Errorf("bench: tokens: %w", err)
	}

	// The measured window, at --start-at when given.
	if o.startAt != 0 {
		at := time.Unix(o.startAt, 0)
		if d := time.Until(at); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return ctx.Err()
			}
		} else {
			fmt.Fprintf(out, "bench: warning: the window starts %s after --start-at (minting took longer); the generators' windows differ by as much\n", (-d).Round(time.Millisecond))
		}
	}
	workers := o.concurrency
	if rate > 0 && !o.concurrencySet {
		workers = min(max(int(math.Ceil(rate/10)), 8), 512)
	}
	// Connections are opened (TLS handshakes done) before the window, as many per source
	// address as its share of the requests in flight can use: the window measures requests
	// over kept-alive connections, not a burst of handshakes at its start.
	http1 := o.http1 || u.Scheme != "https" // without TLS, net/http speaks HTTP/1.1
	warm, err := warmBenchConns(ctx, clients, base+"/v1/ca/user.pub", workers, http1)
	if err != nil {
		return fmt.Errorf("bench: opening connections before the window: %w", err)
	}
	fmt.Fprintf(out, "bench: %d connections opened before the window (%s)\n", warm, map[bool]string{false: "HTTP/2", true: "HTTP/1.1"}[http1])
	results := make([]benchResult, n)
	var next, done, failed atomic.Int64
	serverBefore, _, serverErr := processCPU(o.serverPIDs)
	if serverErr != nil {
		return fmt.Errorf("bench: --server-pid: %w", serverErr)
	}
	selfBefore := selfCPU()
	var profiled chan error
	if o.pprofURL != "" {
		profiled = make(chan error, 1)
		secs := max(1, int((o.duration-time.Second)/time.Second))
		go func() { profiled <- fetchProfile(ctx, o.pprofURL, secs, o.pprofOut) }()
	}
	if o.selfProfile != "" {
		f, err := os.Create(o.selfProfile)
		if err != nil {
			return fmt.Errorf("bench: --self-pprof-out: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("bench: --self-pprof-out: %w", err)
		}
		defer pprof.StopCPUProfile() // a second stop, after the window's, does nothing
	}
	start := time.Now()
	deadline := start.Add(o.duration)
	stopProgress := make(chan struct{})
	var progressDone sync.WaitGroup
	progressDone.Add(1)
	go func() {
		defer progressDone.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		last, lastAt := int64(0), start
		for {
			select {
			case <-stopProgress:
				return
			case now := <-tick.C:
				d := done.Load()
				fmt.Fprintf(progress, "bench: %4.0fs  %d requests  %.0f/s  errors %d\n",
					now.Sub(start).Seconds(), d, float64(d-last)/now.Sub(lastAt).Seconds(), failed.Load())
				last, lastAt = d, now
			}
		}
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j := int(next.Add(1) - 1)
				if j >= n || ctx.Err() != nil {
					return
				}
				sendAt := time.Now()
				if rate > 0 {
					sendAt = start.Add(time.Duration(float64(j) / rate * float64(time.Second)))
					if !sendAt.Before(deadline) {
						return
					}
					if d := time.Until(sendAt); d > 0 {
						time.Sleep(d)
					}
				} else if !sendAt.Before(deadline) {
					return
				}
				r := benchPost(ctx, clients[j%len(clients)], base+"/v1/certs/user", tokens.get(j), bodies[j%len(bodies)])
				r.latency = time.Since(sendAt)
				if j%long.sampleEvery != 0 && r.err == nil && r.status == http.StatusOK {
					r.body = nil // not in the sample: only its status and latency are kept
				}
				results[j] = r
				if r.err != nil || r.status != http.StatusOK {
					failed.Add(1)
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if o.selfProfile != "" {
		pprof.StopCPUProfile()
		fmt.Fprintf(out, "bench: CPU profile of this generator over the window in %s\n", o.selfProfile)
	}
	selfAfter := selfCPU()
	serverAfter, serverNames, serverErr := processCPU(o.serverPIDs)
	close(stopProgress)
	progressDone.Wait()
	if serverErr != nil {
		return fmt.Errorf("bench: --server-pid: %w", serverErr)
	}
	if profiled != nil {
		if err := <-profiled; err != nil {
			fmt.Fprintf(out, "bench: warning: no CPU profile: %v\n", err)
		} else {
			fmt.Fprintf(out, "bench: CPU profile of the server in %s\n", o.pprofOut)
		}
	}
	sent := min(int(next.Load()), n)
	if rate == 0 && sent >= n && time.Now().Before(deadline) {
		fmt.Fprintf(out, "bench: warning: the %d tokens ran out after %s; the window was shortened (raise --tokens)\n", n, elapsed.Round(time.Millisecond))
	}

	// After the window: verify every certificate.
	caKeys, caErr := fetchUserCAKeys(ctx, clients[0], base+"/v1/ca/user.pub")
	if caErr != nil {
		fmt.Fprintf(out, "bench: cannot verify certificates: %v\n", caErr)
	}
	var ok, verified int
	var lat []time.Duration
	kinds := map[string]int{}
	for j := range results[:sent] {
		r := &results[j]
		if r.status == 0 && r.err == nil {
			continue // never sent: the worker stopped at the deadline
		}
		var why string
		switch {
		case r.err != nil:
			why = "transport"
		case r.status != http.StatusOK:
			why = "HTTP " + strconv.Itoa(r.status)
		case caErr != nil:
			why = "unverified"
		case r.body == nil:
			// outside the verified sample of a long run
		default:
			verified++
			if err := verifyBenchCert(r.body, keys[j%len(keys)], caKeys, r.at); err != nil {
				why = "invalid certificate"
				if kinds[why] == 0 {
					fmt.Fprintf(out, "bench: invalid certificate: %v\n", err)
				}
			}
		}
		if why != "" {
			switch {
			case kinds[why] > 0:
			case r.err != nil:
				fmt.Fprintf(out, "bench: first transport error: %v\n", r.err)
			case r.status != http.StatusOK:
				fmt.Fprintf(out, "bench: first %s: %.200s\n", why, bytes.TrimSpace(r.body))
			}
			kinds[why]++
			continue
		}
		ok++
		lat = append(lat, r.latency)
	}
	errs := 0
	var kindNames []string
	for k, c := range kinds {
		errs += c
		kindNames = append(kindNames, fmt.Sprintf("%s: %d", k, c))
	}
	slices.Sort(kindNames)
	slices.Sort(lat)
	certsPerSec := float64(ok) / elapsed.Seconds()
	mode := fmt.Sprintf("closed loop, %d in flight", workers)
	if rate > 0 {
		mode = fmt.Sprintf("open loop at %g/s, at most %d in flight", rate, workers)
	}
	if verified == ok {
		fmt.Fprintf(out, "bench: %d requests in %s (%s), %d certificates verified\n", ok+errs, elapsed.Round(time.Millisecond), mode, ok)
	} else {
		fmt.Fprintf(out, "bench: %d requests in %s (%s), %d certificates, a sample of %d verified\n", ok+errs, elapsed.Round(time.Millisecond), mode, ok, verified)
	}
	if len(kindNames) > 0 {
		fmt.Fprintf(out, "bench: errors by kind: %s\n", strings.Join(kindNames, ", "))
	}
	fmt.Fprintf(out, "bench: client_cpu_us_per_cert: %s\n", perCert(selfAfter-selfBefore, ok))
	serverCPU := "n/a"
	if len(o.serverPIDs) > 0 {
		serverCPU = perCert(sumCPU(serverBefore, serverAfter), ok)
		// Each process apart: the profile of the server covers its own CPU only, and the
		// non-cryptographic share is computed from it (docs/performance.md).
		parts := make([]string, len(o.serverPIDs))
		for i, pid := range o.serverPIDs {
			parts[i] = fmt.Sprintf("%d (%s): %s", pid, serverNames[i], perCert(serverAfter[i]-serverBefore[i], ok))
		}
		fmt.Fprintf(out, "bench: server_cpu_us_per_cert by process: %s\n", strings.Join(parts, ", "))
	}
	fmt.Fprintf(out, "certs/s: %.0f  p50: %.2f ms  p99: %.2f ms  errors: %d  server_cpu_us_per_cert: %s\n",
		certsPerSec, ms(percentile(lat, 0.50)), ms(percentile(lat, 0.99)), errs, serverCPU)
	if errs > 0 {
		return fmt.Errorf("bench: %d of %d requests failed", errs, ok+errs)
	}
	return nil
}

// fetchProfile gets a CPU profile of secs seconds from the pprof endpoint url and writes it
// to path.
func fetchProfile(ctx context.Context, url string, secs int, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"?seconds="+strconv.Itoa(secs), nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: time.Duration(secs+30) * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := bodylimit.ReadAll(resp, 64<<20)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d: %.200s", url, resp.StatusCode, bytes.TrimSpace(data))
	}
	return os.WriteFile(path, data, 0o600)
}

// perCert is cpu spent per certificate in microseconds, or "n/a" when none was issued.
func perCert(cpu time.Duration, certs int) string {
	if certs == 0 {
		return "n/a"
	}
	return strconv.FormatFloat(float64(cpu.Microseconds())/float64(certs), 'f', 0, 64)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the nearest-rank q-quantile of sorted (0 when empty).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// benchPost sends one certificate request and keeps the answer.
// warmBenchConns opens the connections the window will use: per client, one request (HTTP/2
// multiplexes every request to a host over one connection) or, over HTTP/1.1, as many
// concurrent requests as the client's share of workers, each holding its connection until all
// have answered (a connection whose answer was read is reused by the next request, and fewer
// would be opened), so the transports keep that many idle for the window. It returns the
// number of connections opened.
func warmBenchConns(ctx context.Context, clients []*http.Client, url string, workers int, http1 bool) (int, error) {
	per := 1
	if http1 {
		per = max(1, (workers+len(clients)-1)/len(clients))
	}
	var answered sync.WaitGroup
	answered.Add(per * len(clients))
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range clients {
		for range per {
			g.Go(func() error {
				req, err := http.NewRequestWithContext(gctx, http.MethodGet, url, nil)
				if err != nil {
					answered.Done()
					return err
				}
				resp, err := c.Do(req)
				answered.Done()
				if err != nil {
					return err
				}
				answered.Wait()
				_, err = bodylimit.ReadAll(resp, 1<<20)
				return err
			})
		}
	}
	return per * len(clients), g.Wait()
}

func benchPost(ctx context.Context, c *http.Client, url, token string, body []byte) benchResult {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return benchResult{err: err}
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return benchResult{err: err}
	}
	defer resp.Body.Close()
	data, err := bodylimit.ReadAll(resp, 1<<20)
	if err != nil {
		return benchResult{err: err, status: resp.StatusCode}
	}
	return benchResult{status: resp.StatusCode, body: data, at: time.Now()}
}

// mintBenchTokens mints n tokens from the dev issuer at url, token i for identity
// bench-TAG-(i mod identities), eight at a time; with exp (Unix seconds, 0: the issuer's
// default lifetime) as their expiry. With spool they go to a temporary file, one per line,
// instead of memory.
func mintBenchTokens(ctx context.Context, url, secret string, n, identities int, tag string, exp int64, tlsConf *tls.Config, spool bool, progress io.Writer) (*benchTokens, error) {
	tokens := &benchTokens{n: n}
	if spool {
		f, err := os.CreateTemp("", "sshca-bench-tokens-*")
		if err != nil {
			return nil, err
		}
		tokens.file, tokens.w = f, bufio.NewWriterSize(f, 1<<20)
	} else {
		tokens.mem = make([]string, n)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf.Clone(), ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 8}, Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				id := i % identities
				claims := map[string]any{
					"sub": fmt.Sprintf("bench-%s-%d", tag, id), "preferred_username": fmt.Sprintf("bench%s%d", tag, id),
					"email": fmt.Sprintf("bench%s%d@example.com", tag, id), "email_verified": true,
				}
				if exp != 0 {
					claims["exp"] = exp
				}
				tok, err := mintDevTokenWith(ctx, hc, url, secret, claims)
				if err == nil {
					err = tokens.put(i, tok)
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
						next.Store(int64(n)) // stop the others
					}
					mu.Unlock()
					return
				}
				if i > 0 && i%5000 == 0 {
					fmt.Fprintf(progress, "bench: minted %d of %d tokens\n", i, n)
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && tokens.w != nil {
		first = tokens.w.Flush()
	}
	if first != nil {
		tokens.close()
		return nil, first
	}
	return tokens, nil
}

// benchLongWindow is the window from which tokens carry their own exp (the development
// issuer's default lifetime is 10 minutes, and minting a long run's tokens takes minutes).
const benchLongWindow = 5 * time.Minute

// benchLongRun says how a run of n requests keeps the generator's memory bounded: past
// benchMemTokens tokens (a soak: 10 minutes at 1,600/s is about a million, some 800 MB of
// tokens, and as much again of answers) the tokens are spooled to a file and streamed during
// the window, requests cycle through a pool of keys, and one answer in sampleEvery is kept
// and verified.
type benchLongRun struct {
	spool       bool
	keys        int
	sampleEvery int
}

// benchMemTokens is the most tokens (and keys, and verified answers) a run keeps in memory
// (a variable so that a test can take the long-run path with a few hundred requests).
var benchMemTokens = 100_000

func newBenchLongRun(n int) benchLongRun {
	if n <= benchMemTokens {
		return benchLongRun{keys: n, sampleEvery: 1}
	}
	return benchLongRun{spool: true, keys: benchMemTokens, sampleEvery: (n + benchMemTokens - 1) / benchMemTokens}
}

// benchTokens holds a run's tokens: in memory (mem, token j for request j), or spooled to
// file during the mint and read back in order through ch during the window (any token for
// any request: each is used once, and identities were assigned round-robin).
type benchTokens struct {
	n   int
	mem []string

	mu   sync.Mutex // guards w during the mint
	w    *bufio.Writer
	file *os.File
	ch   chan string
	done chan struct{}
}

func (t *benchTokens) put(i int, tok string) error {
	if t.mem != nil {
		t.mem[i] = tok
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	_, err := t.w.WriteString(tok + "\n")
	return err
}

// start begins streaming a spooled file (a no-op in memory); a read error ends the stream
// early, and the requests left then get an empty token (refused, counted as errors).
func (t *benchTokens) start() error {
	if t.file == nil {
		return nil
	}
	if _, err := t.file.Seek(0, io.SeekStart); err != nil {
		return err
	}
	t.ch, t.done = make(chan string, 4096), make(chan struct{})
	go func() {
		defer close(t.ch)
		sc := bufio.NewScanner(bufio.NewReaderSize(t.file, 1<<20))
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			select {
			case t.ch <- sc.Text():
			case <-t.done:
				return
			}
		}
	}()
	return nil
}

// get is the token of request j (j < n, each j once).
func (t *benchTokens) get(j int) string {
	if t.mem != nil {
		return t.mem[j]
	}
	return <-t.ch
}

// close stops the stream and removes the spool file.
func (t *benchTokens) close() {
	if t.file == nil {
		return
	}
	if t.done != nil {
		close(t.done)
		t.done = nil
	}
	t.file.Close()
	os.Remove(t.file.Name())
	t.file = nil
}

// mintDevTokenWith is mintDevToken over the given client (the bench's TLS settings, kept-alive
// connections).
func mintDevTokenWith(ctx context.Context, hc *http.Client, url, secret string, claims map[string]any) (string, error) {
	b, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(devissuer.SecretHeader, secret)
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s unreachable: %w", url, err)
	}
	defer resp.Body.Close()
	data, err := bodylimit.ReadAll(resp, 1<<20)
	if err != nil {
		return "", err
	}
	var reply struct {
		IDToken string `json:"id_token"`
		Error   string `json:"error"`
	}
	_ = json.Unmarshal(data, &reply)
	if resp.StatusCode != http.StatusOK || reply.IDToken == "" {
		return "", fmt.Errorf("POST %s: HTTP %d: %s", url, resp.StatusCode, strings.TrimSpace(string(data)))
	}
	return reply.IDToken, nil
}

// fetchUserCAKeys reads the user CA keys (authorized_keys lines) the server publishes.
func fetchUserCAKeys(ctx context.Context, c *http.Client, url string) ([]ssh.PublicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := bodylimit.ReadAll(resp, 1<<20)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	var keys []ssh.PublicKey
	for rest := data; len(bytes.TrimSpace(rest)) > 0; {
		k, _, _, r, err := ssh.ParseAuthorizedKey(rest)
		if err != nil {
			return nil, fmt.Errorf("GET %s: %w", url, err)
		}
		keys, rest = append(keys, k), r
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("GET %s: no keys", url)
	}
	return keys, nil
}

// verifyBenchCert checks that body is a CertResponse holding a user certificate for key,
// signed by one of caKeys and valid at the time at (when the answer came).
func verifyBenchCert(body []byte, key ssh.PublicKey, caKeys []ssh.PublicKey, at time.Time) error {
	var r client.CertResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("answer: %w", err)
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(r.Certificate))
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	cert, ok := pk.(*ssh.Certificate)
	switch {
	case !ok:
		return errors.New("not a certificate")
	case !bytes.Equal(cert.Key.Marshal(), key.Marshal()):
		return errors.New("certifies another key than the one submitted")
	case cert.CertType != ssh.UserCert:
		return fmt.Errorf("certificate type %d, not a user certificate", cert.CertType)
	case len(cert.ValidPrincipals) == 0:
		return errors.New("no principals")
	}
	checker := ssh.CertChecker{Clock: func() time.Time { return at }, IsUserAuthority: func(auth ssh.PublicKey) bool {
		return slices.ContainsFunc(caKeys, func(k ssh.PublicKey) bool { return bytes.Equal(k.Marshal(), auth.Marshal()) })
	}}
	if !checker.IsUserAuthority(cert.SignatureKey) {
		return errors.New("signed by a key not in /v1/ca/user.pub")
	}
	return checker.CheckCert(cert.ValidPrincipals[0], cert) // signature, validity, principal
}

// selfCPU is this process's CPU time, user plus system.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// processCPU is the CPU time (utime+stime from /proc/PID/stat) of each of pids, and their
// command names.
func processCPU(pids []int) ([]time.Duration, []string, error) {
	cpu, names := make([]time.Duration, len(pids)), make([]string, len(pids))
	for i, pid := range pids {
		p, err := procfs.NewProc(pid)
		if err != nil {
			return nil, nil, fmt.Errorf("process %d: %w", pid, err)
		}
		st, err := p.Stat()
		if err != nil {
			return nil, nil, fmt.Errorf("process %d: %w", pid, err)
		}
		cpu[i], names[i] = time.Duration(st.CPUTime()*float64(time.Second)), st.Comm
	}
	return cpu, names, nil
}

// sumCPU is the sum of after[i]-before[i].
func sumCPU(before, after []time.Duration) time.Duration {
	var total time.Duration
	for i := range after {
		total += after[i] - before[i]
	}
	return total
}
