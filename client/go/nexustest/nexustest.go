// SPDX-License-Identifier: Apache-2.0

// Package nexustest starts a real nexusd for tests: on a free loopback port, as a child
// process that is stopped (SIGTERM, then SIGKILL) when the test ends. No mock broker: what a
// test sees is what a program sees.
//
// The binary is $NEXUSD (CTest sets it), else build/release/nexusd in a folder above the
// working directory (the repository's own build), else nexusd on $PATH. Without one, Start
// fails the test: a client test that cannot reach a broker has tested nothing.
package nexustest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StartTimeout bounds how long Start waits for nexusd to accept connections. Generous: under
// ASan, and on a loaded two-core CI machine, start-up takes far longer than the usual 20 ms.
const StartTimeout = 30 * time.Second

// StopTimeout bounds how long Stop waits for nexusd to drain and exit after SIGTERM before it
// kills it (nexusd's own --drain-ms defaults to 5 s).
const StopTimeout = 20 * time.Second

// Broker is one nexusd process started by Start.
type Broker struct {
	// Addr is the host:port it listens on (127.0.0.1 and a free port).
	Addr string
	// Port is the port of Addr.
	Port int

	tb    testing.TB // nil for StartBroker
	bin   string
	flags []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	status error       // the process's exit (valid once exited is closed)
	log    *syncBuffer // its stdout and stderr, shown when the test fails
}

// syncBuffer is a bytes.Buffer that exec's copying goroutine writes while a test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// Binary returns the nexusd to run (see the package comment), or an error saying how to
// provide one.
func Binary() (string, error) {
	if p := os.Getenv("NEXUSD"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("NEXUSD=%s: %w", p, err)
		}
		return p, nil
	}
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			p := filepath.Join(dir, "build", "release", "nexusd")
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				return p, nil
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	if p, err := exec.LookPath("nexusd"); err == nil {
		return p, nil
	}
	return "", errors.New("no nexusd: set NEXUSD to its path (ctest does), or build the " +
		"repository first (./dev build)")
}

// Start starts nexusd with --listen 127.0.0.1:<free port> --shards 2 --log-level warn and
// the given flags (later flags win, so "--shards", "4" overrides), waits until it accepts
// connections and registers its stop with tb.Cleanup (which fails the test unless nexusd
// exits 0). It fails the test when nexusd does not start.
func Start(tb testing.TB, flags ...string) *Broker {
	tb.Helper()
	b, err := StartBroker(flags...)
	if err != nil {
		tb.Fatal(err)
	}
	b.tb = tb
	tb.Cleanup(b.cleanup)
	return b
}

// StartBroker is Start without a test: the caller stops the broker (Stop or Kill).
func StartBroker(flags ...string) (*Broker, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	b := &Broker{bin: bin, flags: flags}
	var last error
	for attempt := 0; attempt < 5; attempt++ {
		if b.Port, err = FreePort(); err != nil {
			return nil, err
		}
		b.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(b.Port))
		if last = b.start(); last == nil {
			return b, nil
		}
	}
	return nil, fmt.Errorf("nexusd did not start: %w", last)
}

// Main runs a package's tests and examples (from TestMain) against one nexusd started with
// flags, whose address it puts in $NEXUS_BROKER, where Dial(ctx, "") finds it (after
// ClearClientEnv: the developer's own settings must not reach the tests); it stops the
// broker afterwards and returns the exit code for os.Exit: m.Run's, or 1 when the broker did
// not start or did not exit 0.
//
//	func TestMain(m *testing.M) { os.Exit(nexustest.Main(m, "--test-handlers")) }
func Main(m *testing.M, flags ...string) int {
	ClearClientEnv()
	b, err := StartBroker(flags...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nexustest:", err)
		return 1
	}
	os.Setenv("NEXUS_BROKER", b.Addr)
	code := m.Run()
	if err := b.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "nexustest: nexusd on %s: %v\n%s\n", b.Addr, err, lastLines(b.Log()))
		if code == 0 {
			code = 1
		}
	}
	return code
}

// ClearClientEnv unsets the variables the clients read their settings from (NEXUS_BROKER,
// NEXUS_USER, NEXUS_TOKEN, NEXUS_TLS_CA, NEXUS_TLS_CERT, NEXUS_TLS_KEY), so that a test
// sees only what it sets.
func ClearClientEnv() {
	for _, v := range []string{"NEXUS_BROKER", "NEXUS_USER", "NEXUS_TOKEN", "NEXUS_TLS_CA", "NEXUS_TLS_CERT", "NEXUS_TLS_KEY"} {
		os.Unsetenv(v)
	}
}

// Restart starts nexusd again, on the same port with the same flags, after Stop or Kill (a
// restart, as a client sees it).
func (b *Broker) Restart() error {
	b.mu.Lock()
	exited := b.exited
	b.mu.Unlock()
	select {
	case <-exited:
	default:
		// nexusd listens with SO_REUSEPORT: a second one would share the port.
		return errors.New("nexusd is still running: Stop or Kill it first")
	}
	var err error
	// The port was just released; a few attempts ride out a slow exit.
	for attempt := 0; attempt < 10; attempt++ {
		if err = b.start(); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("nexusd did not restart on %s: %w", b.Addr, err)
}

func (b *Broker) start() error {
	args := append([]string{"--listen", b.Addr, "--shards", "2", "--log-level", "warn"}, b.flags...)
	cmd := exec.Command(b.bin, args...)
	logbuf := &syncBuffer{}
	cmd.Stdout = logbuf
	cmd.Stderr = logbuf
	// If the test binary dies (a panic, go test's timeout), the broker goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	b.mu.Lock()
	b.cmd, b.exited, b.log = cmd, exited, logbuf
	b.mu.Unlock()
	go func() {
		err := cmd.Wait()
		b.mu.Lock()
		b.status = err
		b.mu.Unlock()
		close(exited)
	}()
	deadline := time.Now().Add(StartTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("nexusd exited at start (%v): %s", b.exitStatus(), lastLines(b.Log()))
		default:
		}
		c, err := net.DialTimeout("tcp", b.Addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	<-exited
	return fmt.Errorf("nexusd did not accept on %s within %v", b.Addr, StartTimeout)
}

func (b *Broker) exitStatus() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status
}

// Stop sends SIGTERM and waits for nexusd to exit; it returns nil when it exited 0 (a clean
// drain) and an error otherwise (it is killed after StopTimeout). Stopping a stopped broker
// returns nil.
func (b *Broker) Stop() error {
	b.mu.Lock()
	cmd, exited := b.cmd, b.exited
	b.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
		return b.exitStatus()
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return b.exitStatus()
	case <-time.After(StopTimeout):
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("nexusd did not exit within %v of SIGTERM (killed)", StopTimeout)
	}
}

// Kill stops nexusd with SIGKILL (no drain: a crash, as clients see it) and waits for it.
func (b *Broker) Kill() {
	b.mu.Lock()
	cmd, exited := b.cmd, b.exited
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// Signal sends sig to the running nexusd (SIGSTOP freezes it: a broker that no longer
// answers; SIGCONT thaws it; SIGHUP reloads its accounts file).
func (b *Broker) Signal(sig os.Signal) error {
	b.mu.Lock()
	cmd := b.cmd
	b.mu.Unlock()
	if cmd == nil {
		return errors.New("nexusd is not running")
	}
	return cmd.Process.Signal(sig)
}

// Log returns what nexusd wrote to stdout and stderr so far (its current run).
func (b *Broker) Log() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.log == nil {
		return ""
	}
	return b.log.String()
}

// cleanup stops a broker still running at the end of the test; one the test stopped or
// killed itself was checked there.
func (b *Broker) cleanup() {
	b.mu.Lock()
	exited := b.exited
	b.mu.Unlock()
	select {
	case <-exited:
	default:
		if err := b.Stop(); err != nil {
			b.tb.Errorf("nexusd on %s: %v", b.Addr, err)
		}
	}
	if b.tb.Failed() {
		b.tb.Logf("nexusd on %s wrote:\n%s", b.Addr, lastLines(b.Log()))
	}
}

// lastLines returns the last 40 lines of text.
func lastLines(text string) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

// FreePort returns a loopback TCP port that is free right now (bound to 0, read back,
// released).
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// HashToken returns the argon2id hash of token that `nexusd --hash-token` prints, for an
// accounts file (docs/SECURITY.md). It fails the test when nexusd cannot make one.
func HashToken(tb testing.TB, token string) string {
	tb.Helper()
	bin, err := Binary()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, "--hash-token")
	cmd.Stdin = strings.NewReader(token)
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("nexusd --hash-token: %v", err)
	}
	h := strings.TrimSpace(string(out))
	if !strings.HasPrefix(h, "$argon2id$") {
		tb.Fatalf("nexusd --hash-token printed %q", h)
	}
	return h
}

// WriteFile writes text to a file named name in a folder of the test's own (tb.TempDir) and
// returns its path: accounts files, certificates.
func WriteFile(tb testing.TB, name, text string) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}
