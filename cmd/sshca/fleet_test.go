package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/procfs"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/krl"
)

// fleetCAConfigEnv names the configuration file of the CA process TestBastionFleet starts: the
// test binary itself, run as TestFleetCAProcess, so that the CA's CPU, file descriptors,
// connections and goroutines are its own and not mixed with the agents'.
const fleetCAConfigEnv = "SSHCA_FLEET_CA_CONFIG"

// TestBastionFleet: a fleet of bastion agents, half following Redis (one XREAD each), half long
// polling the CA over HTTPS (TLS, the CA's certificate pinned), each with its own connection
// and its own KRL file written as in production (temporary file, fsync, rename, fsync of the
// directory). The agents run in this process (100 processes of sshca would take the two cores
// to themselves and measure the scheduler); `sshca serve` runs in a process of its own, and
// redis-server in its own.
//
// For each revocation it measures the time from POST /v1/revocations until every agent's KRL
// file revokes the certificate, read back with the krl package as each file is renamed into
// place (inotify); at the end every file is checked with `ssh-keygen -Q` for every revoked
// certificate. It reports p50/p99 (the target is p99 < 0.5 s) and what the CA and Redis spend
// per agent: connections, goroutines, file descriptors, CPU while idle and per revocation.
//
// It asserts correctness (every file gets every revocation, within 10 s each) and reports
// figures. Under `go tool task test` it runs a small fleet (10 agents, 5 revocations);
// SSHCA_BENCH_FLEET=1 (`go tool task bench-fleet`) runs 100 agents and 30 revocations, and
// SSHCA_FLEET_AGENTS / SSHCA_FLEET_REVOCATIONS change either.
func TestBastionFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet of bastion agents and a CA process; not under -short")
	}
	agents, revocations, idle := 10, 5, 2*time.Second
	bench := os.Getenv("SSHCA_BENCH_FLEET") != ""
	if bench {
		agents, revocations, idle = 100, 30, 10*time.Second
	}
	agents = envInt(t, "SSHCA_FLEET_AGENTS", agents)
	revocations = envInt(t, "SSHCA_FLEET_REVOCATIONS", revocations)
	if agents < 2 || revocations < 1 {
		t.Fatalf("SSHCA_FLEET_AGENTS %d and SSHCA_FLEET_REVOCATIONS %d: give at least 2 agents and 1 revocation", agents, revocations)
	}
	testenv.Need(t, "ssh-keygen")
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	idp := startIssuer(t, "sshca")
	mint := minter(t, idp)

	// The CA: serve over TLS with a certificate the agents pin; every agent comes from
	// 127.0.0.1 here, so the long polls per address are raised to the fleet (in production
	// each bastion has its own address).
	dir := t.TempDir()
	tca := newTestCA(t, "fleet-ca")
	certPEM, keyPEM := tca.issue(t, "127.0.0.1", true)
	serverCA := filepath.Join(dir, "server-ca.pem")
	writeFile(t, serverCA, string(tca.pem))
	writeFile(t, filepath.Join(dir, "tls.crt"), string(certPEM))
	writeFile(t, filepath.Join(dir, "tls.key"), string(keyPEM))
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.TLS = TLSConfig{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	cfg.Limits.Rate.LongPollsPerAddress = agents + 8
	ca := startFleetCA(t, cfg)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(tca.pem)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}, Timeout: 30 * time.Second}
	t.Cleanup(client.CloseIdleConnections)

	// Certificates to revoke, issued before anything is measured.
	userKey := keygen(t, dir, "alice")
	pub := readFile(t, userKey+".pub")
	calibrate := 3 // revocations with no agent: what a revocation costs by itself
	if bench {
		calibrate = 10
	}
	var certs []issuedCert
	for range calibrate + revocations {
		tok := mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
		var c issuedCert
		fleetCall(t, client, http.MethodPost, ca.base+"/v1/certs/user", tok, map[string]any{"public_key": pub, "ttl": "30m"}, &c)
		certs = append(certs, c)
	}
	admin := mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})
	revoke := func(c issuedCert) {
		fleetCall(t, client, http.MethodPost, ca.base+"/v1/revocations", admin, map[string]any{"serial": c.Serial, "reason": "fleet"}, nil)
	}

	// Calibration: revocations with no agent waiting.
	idleCA := ca.sample(t)
	idleRedis := redisSample(t, rdb)
	beforeCal := fleetSample{ca: ca.sample(t), redis: redisSample(t, rdb)}
	for _, c := range certs[:calibrate] {
		revoke(c)
		time.Sleep(200 * time.Millisecond)
	}
	afterCal := fleetSample{ca: ca.sample(t), redis: redisSample(t, rdb)}
	certs = certs[calibrate:]

	// The fleet.
	self, err := procfs.Self()
	if err != nil {
		t.Fatal(err)
	}
	goroutinesBefore := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	// Agents log warnings and errors only, into the test's log.
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fleet := make([]*fleetAgent, agents)
	flags := make([]agentFlags, agents)
	for i := range fleet {
		adir := filepath.Join(dir, "agent"+strconv.Itoa(i))
		if err := os.Mkdir(adir, 0o755); err != nil {
			t.Fatal(err)
		}
		f := agentFlags{krlPath: filepath.Join(adir, "sshca.krl"), userCA: filepath.Join(adir, "user_ca.pub"), health: "127.0.0.1:0", poll: time.Second}
		mode := "redis"
		if i%2 == 1 {
			mode, f.server, f.serverCA = "https", ca.base, serverCA
		} else {
			f.redis.url = "redis://" + r.Addr
		}
		fleet[i], flags[i] = &fleetAgent{mode: mode, krlPath: f.krlPath}, f
	}
	// The watch first: every agent takes an inotify instance of its own for its guard, and
	// past fs.inotify.max_user_instances (128 by default, for every process of the user) the
	// agents fall back to re-checking their files every second, but this watch would fail.
	w := watchFleet(t, fleet)
	for i, f := range flags {
		mode := fleet[i].mode
		ready := make(chan *bastion.Agent, 1)
		wg.Go(func() {
			if err := runAgent(ctx, f, log, ready); err != nil && ctx.Err() == nil {
				t.Errorf("agent %d (%s): %v", i, mode, err)
			}
		})
		select {
		case fleet[i].agent = <-ready:
		case <-time.After(30 * time.Second):
			t.Fatalf("agent %d (%s) did not start within 30s", i, mode)
		}
	}
	waitFor(t, 30*time.Second, "every agent is connected to its source", func() bool {
		for _, a := range fleet {
			if !a.agent.Status().Connected {
				return false
			}
		}
		return true
	})

	// Idle: what waiting agents cost.
	time.Sleep(2 * time.Second) // settle: every agent in its XREAD or long poll
	up := fleetSample{ca: ca.sample(t), redis: redisSample(t, rdb), self: procCPU(t, self)}
	time.Sleep(idle)
	idled := fleetSample{ca: ca.sample(t), redis: redisSample(t, rdb), self: procCPU(t, self)}
	goroutines := runtime.NumGoroutine()

	// Revocations, one at a time, a pause between them so every agent waits again.
	perRound := make([]time.Duration, 0, revocations)
	perMode := map[string][]time.Duration{}
	var firsts, medians []time.Duration // the first agent's file, the median agent's, per round
	var answered []time.Duration        // POST /v1/revocations answered
	for i, c := range certs {
		time.Sleep(300 * time.Millisecond)
		cert := parseCert(t, c.Certificate)
		start := w.expect(cert)
		revoke(c)
		answered = append(answered, time.Since(start))
		if err := w.wait(10 * time.Second); err != nil {
			t.Fatalf("revocation %d (serial %s): %v", i, c.Serial, err)
		}
		all, byMode, first, median := w.latencies(start)
		perRound = append(perRound, all)
		firsts, medians = append(firsts, first), append(medians, median)
		for m, d := range byMode {
			perMode[m] = append(perMode[m], d)
		}
	}
	revoked := fleetSample{ca: ca.sample(t), redis: redisSample(t, rdb), self: procCPU(t, self)}
	w.close()

	// Correctness by OpenSSH itself: every file revokes every certificate.
	var paths []string
	for _, c := range certs {
		p := filepath.Join(dir, "revoked-"+c.Serial+"-cert.pub")
		writeFile(t, p, c.Certificate+"\n")
		paths = append(paths, p)
	}
	keygenBin := testenv.Need(t, "ssh-keygen")
	for i, a := range fleet {
		out, err := exec.Command(keygenBin, append([]string{"-Q", "-f", a.krlPath}, paths...)...).CombinedOutput()
		// ssh-keygen -Q exits non-zero when a key is revoked: read its lines instead.
		if n := strings.Count(string(out), ": REVOKED"); n != len(paths) {
			t.Errorf("agent %d (%s): ssh-keygen -Q finds %d of %d certificates revoked in %s (%v):\n%s", i, a.mode, n, len(paths), a.krlPath, err, out)
		}
	}

	// Figures.
	httpsAgents, redisAgents := agents/2, agents-agents/2
	p := func(ds []time.Duration) string {
		s := slices.Clone(ds)
		slices.Sort(s)
		n := len(s)
		return fmt.Sprintf("p50 %s p99 %s max %s", s[n/2].Round(time.Millisecond), s[(n*99-1)/100].Round(time.Millisecond), s[n-1].Round(time.Millisecond))
	}
	report := func(format string, args ...any) {
		t.Logf(format, args...)
		fmt.Printf("FLEET "+format+"\n", args...)
	}
	report("agents=%d (redis %d, https %d, in one process) revocations=%d", agents, redisAgents, httpsAgents, revocations)
	report("revoke-to-all-files: %s", p(perRound))
	for _, m := range []string{"redis", "https"} {
		report("revoke-to-all-files %s agents: %s", m, p(perMode[m]))
	}
	// The spread between the first file and the last is mostly the agents' fsyncs queueing on
	// this one disk (a real fleet has a disk per bastion).
	report("revoke-to-first-file: %s; revoke-to-median-file: %s; revocation answered: %s", p(firsts), p(medians), p(answered))
	report("redis: connected_clients %d (before the fleet %d), blocked_clients %d: %.2f connections per Redis agent",
		up.redis.clients, idleRedis.clients, up.redis.blocked, float64(up.redis.clients-idleRedis.clients)/float64(redisAgents))
	report("ca: established connections on its port %d, fds %d (before the fleet %d), goroutines %d (before %d), RSS %.1f MiB (before %.1f): per HTTPS agent %.2f fds, %.2f goroutines, %.1f KiB",
		up.ca.conns, up.ca.fds, idleCA.fds, up.ca.goroutines, idleCA.goroutines, float64(up.ca.rss)/(1<<20), float64(idleCA.rss)/(1<<20),
		float64(up.ca.fds-idleCA.fds)/float64(httpsAgents), float64(up.ca.goroutines-idleCA.goroutines)/float64(httpsAgents), float64(up.ca.rss-idleCA.rss)/1024/float64(httpsAgents))
	report("agents' process: %.1f goroutines per agent", float64(goroutines-goroutinesBefore)/float64(agents))
	secs := idle.Seconds()
	report("idle %s: CA CPU %.2f ms/s (%.1f µs/s per HTTPS agent), redis CPU %.2f ms/s, %.1f redis commands/s (%.3f per agent per s), agents' process CPU %.2f ms/s",
		idle, idled.ca.cpu.Seconds()*1e3/secs-up.ca.cpu.Seconds()*1e3/secs, (idled.ca.cpu-up.ca.cpu).Seconds()*1e6/secs/float64(httpsAgents),
		(idled.redis.cpu-up.redis.cpu).Seconds()*1e3/secs, float64(idled.redis.commands-up.redis.commands)/secs,
		float64(idled.redis.commands-up.redis.commands)/secs/float64(agents), (idled.self-up.self).Seconds()*1e3/secs)
	calCA := (afterCal.ca.cpu - beforeCal.ca.cpu) / time.Duration(calibrate)
	calRedis := (afterCal.redis.cpu - beforeCal.redis.cpu) / time.Duration(calibrate)
	calCmds := float64(afterCal.redis.commands-beforeCal.redis.commands) / float64(calibrate)
	n := time.Duration(revocations)
	caPer, redisPer := (revoked.ca.cpu-idled.ca.cpu)/n, (revoked.redis.cpu-idled.redis.cpu)/n
	cmdsPer := float64(revoked.redis.commands-idled.redis.commands) / float64(revocations)
	report("per revocation with no agent: CA CPU %s, redis CPU %s, %.0f redis commands", calCA.Round(time.Microsecond), calRedis.Round(time.Microsecond), calCmds)
	report("per revocation with the fleet: CA CPU %s (%.0f µs more per HTTPS agent), redis CPU %s (%.1f µs more per agent), %.0f redis commands (%.2f more per agent), agents' process CPU %s (%.0f µs per agent)",
		caPer.Round(time.Microsecond), float64((caPer-calCA).Microseconds())/float64(httpsAgents),
		redisPer.Round(time.Microsecond), float64((redisPer-calRedis).Microseconds())/float64(agents),
		cmdsPer, (cmdsPer-calCmds)/float64(agents),
		((revoked.self - idled.self) / n).Round(time.Microsecond), float64(((revoked.self-idled.self)/n).Microseconds())/float64(agents))
}

// TestFleetCAProcess is not a test: TestBastionFleet runs the test binary as this to have
// `sshca serve` in a process of its own. It serves the configuration named by
// SSHCA_FLEET_CA_CONFIG, prints the address, and runs until interrupted.
func TestFleetCAProcess(t *testing.T) {
	path := os.Getenv(fleetCAConfigEnv)
	if path == "" {
		t.Skip("the CA process of TestBastionFleet")
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ready := make(chan string, 1)
	errc := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	go func() { errc <- serve(ctx, cfg, log, ready) }()
	select {
	case addr := <-ready:
		fmt.Printf("FLEET-CA-ADDR %s\n", addr)
	case err := <-errc:
		t.Fatal(err)
	}
	if err := <-errc; err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}
}

// fleetCA is the CA process.
type fleetCA struct {
	base string
	pid  int
	port uint64
	// client reads /metrics (go_goroutines).
	client *http.Client
}

// startFleetCA runs serve with cfg in a process of its own until the test ends.
func startFleetCA(t *testing.T, cfg *Config) *fleetCA {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sshca.yaml")
	writeFile(t, path, string(b))
	cmd := exec.Command(os.Args[0], "-test.run=^TestFleetCAProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), fleetCAConfigEnv+"="+path)
	cmd.Stderr = testWriter{t}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "FLEET-CA-ADDR "); ok {
				addr <- a
			}
		}
		close(addr)
	}()
	var a string
	select {
	case a = <-addr:
	case <-time.After(90 * time.Second):
		t.Fatal("the CA process did not start within 90s")
	}
	if a == "" {
		t.Fatal("the CA process ended before it listened")
	}
	_, portStr, _ := net.SplitHostPort(a)
	port, _ := strconv.ParseUint(portStr, 10, 16)
	return &fleetCA{base: "https://" + a, pid: cmd.Process.Pid, port: port,
		client: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 10 * time.Second}}
}

// caSample is what the CA process holds at one moment.
type caSample struct {
	cpu        time.Duration
	fds        int
	conns      int // established TCP connections to its listener
	goroutines int
	rss        int
}

func (c *fleetCA) sample(t *testing.T) caSample {
	t.Helper()
	p, err := procfs.NewProc(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	s := caSample{cpu: procCPU(t, p)}
	if s.fds, err = p.FileDescriptorsLen(); err != nil {
		t.Fatal(err)
	}
	st, err := p.Stat()
	if err != nil {
		t.Fatal(err)
	}
	s.rss = st.ResidentMemory()
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := fs.NetTCP()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range tcp {
		if l.St == 1 && l.LocalPort == c.port {
			s.conns++
		}
	}
	resp, err := c.client.Get(c.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			s.goroutines = int(f)
		}
	}
	return s
}

// redisSampled is what redis-server holds and has spent at one moment.
type redisSampled struct {
	cpu              time.Duration
	clients, blocked int
	commands         int
}

func redisSample(t *testing.T, rdb *redis.Client) redisSampled {
	t.Helper()
	info, err := rdb.Info(context.Background(), "cpu", "clients", "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	var s redisSampled
	var user, sys float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "used_cpu_user":
			user, _ = strconv.ParseFloat(v, 64)
		case "used_cpu_sys":
			sys, _ = strconv.ParseFloat(v, 64)
		case "connected_clients":
			s.clients, _ = strconv.Atoi(v)
		case "blocked_clients":
			s.blocked, _ = strconv.Atoi(v)
		case "total_commands_processed":
			s.commands, _ = strconv.Atoi(v)
		}
	}
	s.cpu = time.Duration((user + sys) * float64(time.Second))
	return s
}

type fleetSample struct {
	ca    caSample
	redis redisSampled
	self  time.Duration
}

func procCPU(t *testing.T, p procfs.Proc) time.Duration {
	t.Helper()
	st, err := p.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(st.CPUTime() * float64(time.Second))
}

type fleetAgent struct {
	mode    string
	krlPath string
	agent   *bastion.Agent
}

// fleetWatch notes when each agent's KRL file first revokes the expected certificate: on every
// rename into place (inotify), the file is read back and parsed with the krl package.
type fleetWatch struct {
	t      *testing.T
	fleet  []*fleetAgent
	byPath map[string]int
	w      *fsnotify.Watcher
	done   chan struct{}

	mu     sync.Mutex
	cert   *ssh.Certificate
	seen   []time.Time
	all    chan struct{} // closed when every agent has it
	missed int
}

func watchFleet(t *testing.T, fleet []*fleetAgent) *fleetWatch {
	t.Helper()
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	w := &fleetWatch{t: t, fleet: fleet, byPath: map[string]int{}, w: fw, done: make(chan struct{})}
	for i, a := range fleet {
		w.byPath[a.krlPath] = i
		if err := fw.Add(filepath.Dir(a.krlPath)); err != nil {
			t.Fatal(err)
		}
	}
	go w.run()
	t.Cleanup(w.close)
	return w
}

func (w *fleetWatch) run() {
	defer close(w.done)
	for {
		select {
		case ev, ok := <-w.w.Events:
			if !ok {
				return
			}
			i, mine := w.byPath[ev.Name]
			if !mine || !ev.Has(fsnotify.Create) {
				continue // the rename into place is a Create of the file's name
			}
			at := time.Now()
			w.mu.Lock()
			cert := w.cert
			pending := cert != nil && w.seen[i].IsZero()
			w.mu.Unlock()
			if !pending {
				continue
			}
			b, err := os.ReadFile(ev.Name)
			if err != nil {
				continue // replaced again meanwhile: its own event follows
			}
			k, err := krl.Parse(b)
			if err != nil {
				w.t.Errorf("agent %d installed a KRL that does not parse: %v", i, err)
				continue
			}
			if !k.IsRevoked(cert) {
				continue
			}
			w.mu.Lock()
			if w.cert == cert && w.seen[i].IsZero() {
				w.seen[i] = at
				if !slices.ContainsFunc(w.seen, time.Time.IsZero) {
					close(w.all)
				}
			}
			w.mu.Unlock()
		case err, ok := <-w.w.Errors:
			if !ok {
				return
			}
			w.t.Errorf("inotify: %v (events lost: the figures would be wrong)", err)
		}
	}
}

// expect starts a round: from now on, the first file of each agent that revokes cert is noted.
// It returns the round's start.
func (w *fleetWatch) expect(cert *ssh.Certificate) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cert, w.seen, w.all = cert, make([]time.Time, len(w.fleet)), make(chan struct{})
	return time.Now()
}

// wait waits until every agent's file revokes the round's certificate; on timeout it names
// those whose file does not.
func (w *fleetWatch) wait(within time.Duration) error {
	w.mu.Lock()
	all := w.all
	w.mu.Unlock()
	select {
	case <-all:
		return nil
	case <-time.After(within):
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var late []string
	for i, s := range w.seen {
		if s.IsZero() {
			late = append(late, fmt.Sprintf("%d (%s)", i, w.fleet[i].mode))
		}
	}
	return fmt.Errorf("after %s, %d agents' KRL files still do not revoke it: %s", within, len(late), strings.Join(late, ", "))
}

// latencies are the round's time until every file revoked the certificate, in all and by
// agent mode, and until the first and the median agent's file did.
func (w *fleetWatch) latencies(start time.Time) (all time.Duration, byMode map[string]time.Duration, first, median time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	byMode = map[string]time.Duration{}
	each := make([]time.Duration, 0, len(w.seen))
	for i, s := range w.seen {
		d := s.Sub(start)
		each = append(each, d)
		all = max(all, d)
		byMode[w.fleet[i].mode] = max(byMode[w.fleet[i].mode], d)
	}
	slices.Sort(each)
	return all, byMode, each[0], each[len(each)/2]
}

func (w *fleetWatch) close() {
	select {
	case <-w.done:
		return
	default:
	}
	w.w.Close()
	<-w.done
}

// fleetCall sends body as JSON with the client and decodes the answer into out (when not nil);
// anything but 200 fails the test.
func fleetCall(t *testing.T, c *http.Client, method, url, token string, body, out any) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(method, url, strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s = %d %s", method, url, resp.StatusCode, rb)
	}
	if out != nil {
		if err := json.Unmarshal(rb, out); err != nil {
			t.Fatal(err)
		}
	}
}

// envInt is the integer in the environment variable name, or def when it is unset.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: give a whole number", name, v)
	}
	return n
}
