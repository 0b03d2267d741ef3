package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The tests start one throwaway PostgreSQL server per test binary from the
// installed binaries (initdb, postgres) in a temporary directory, listening
// on a Unix socket there and on 127.0.0.1, and give each test a database of
// its own. As root (initdb refuses to run as root) the server runs as the
// postgres system user, or nobody, in a directory that user owns.

// requireEnv makes a missing PostgreSQL a failure instead of a skip (CI).
const requireEnv = "XPLOCK_REQUIRE_POSTGRES"

// binDirEnv names the directory of initdb and postgres, overriding the search.
const binDirEnv = "XPLOCK_PG_BINDIR"

const installHint = "install PostgreSQL to run them (Debian/Ubuntu: apt-get install postgresql; " +
	"Fedora: dnf install postgresql-server; macOS: brew install postgresql), or set " + binDirEnv +
	" to the directory holding initdb and postgres"

var (
	// server is the test server, nil when it could not be started.
	server *pgServer
	// serverErr says why there is no server; notInstalled makes it a skip.
	serverErr    error
	notInstalled bool
)

type pgServer struct {
	dir     string // owned by the server's user; removed at the end
	sockDir string
	port    int
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
	// run starts a server program as the server's user; data is the
	// data directory.
	run  func(name string, args ...string) *exec.Cmd
	data string

	mu      sync.Mutex
	admin   *pgx.Conn
	version int // server_version_num
	dbs     int
}

// needServer skips the test when PostgreSQL is not installed (failing it
// when XPLOCK_REQUIRE_POSTGRES=1) and fails it when the server did not
// start.
func needServer(t testing.TB) *pgServer {
	t.Helper()
	if server != nil {
		return server
	}
	if notInstalled {
		if os.Getenv(requireEnv) != "1" {
			t.Skipf("PostgreSQL tests skipped: %v; %s", serverErr, installHint)
		}
		t.Fatalf("%s=1 but %v; %s", requireEnv, serverErr, installHint)
	}
	t.Fatalf("no PostgreSQL test server: %v", serverErr)
	return nil
}

// findBinDir finds a directory holding initdb and postgres.
func findBinDir() (string, error) {
	has := func(dir string) bool {
		for _, name := range []string{"initdb", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv(binDirEnv); dir != "" {
		if has(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("%s=%s holds no initdb and postgres", binDirEnv, dir)
	}
	// Debian and Ubuntu install each major version in its own directory;
	// take the newest.
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	dirs = append(dirs, "/usr/pgsql/bin", "/usr/local/pgsql/bin")
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(real))
		}
		dirs = append(dirs, filepath.Dir(p))
	}
	for _, dir := range dirs {
		if has(dir) {
			return dir, nil
		}
	}
	return "", errors.New("PostgreSQL is not installed: no initdb and postgres in PATH or /usr/lib/postgresql/*/bin")
}

// serverUser is who runs initdb and postgres: this process, or when it is
// root the postgres system user (nobody when there is none).
func serverUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	var u *user.User
	var err error
	for _, name := range []string{"postgres", "nobody"} {
		if u, err = user.Lookup(name); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("running as root, and there is no postgres or nobody user to run the server as: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// baseTempDir is where the server's directory goes: the usual temporary
// directory unless the server's user could not reach it or a socket path
// there would be too long.
func baseTempDir(cred *syscall.Credential) string {
	base := os.TempDir()
	if len(base) > 60 {
		return "/tmp"
	}
	if cred == nil {
		return base
	}
	// Every ancestor must be searchable by the server's user.
	for dir := base; ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if dir == "/" {
			return base
		}
	}
}

func startServer() (*pgServer, error) {
	binDir, err := findBinDir()
	if err != nil {
		notInstalled = true
		return nil, err
	}
	cred, err := serverUser()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(baseTempDir(cred), "xplock-pg-")
	if err != nil {
		return nil, err
	}
	s := &pgServer{dir: dir, sockDir: filepath.Join(dir, "sock"), logPath: filepath.Join(dir, "server.log")}
	if err := os.Mkdir(s.sockDir, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if cred != nil {
		for _, p := range []string{dir, s.sockDir} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				os.RemoveAll(dir)
				return nil, err
			}
		}
	}
	run := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(binDir, name), args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		return cmd
	}
	data := filepath.Join(dir, "data")
	initdb := run("initdb", "-D", data, "-U", "xplock", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb (%s): %v\n%s", binDir, err, out)
	}
	s.run, s.data = run, data
	for attempt := 1; ; attempt++ {
		err := s.start(0)
		if err == nil {
			return s, nil
		}
		if attempt == 3 {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

// start runs postgres on port (a free loopback port when 0), a child of
// this process that gets SIGQUIT (immediate shutdown) if the test binary
// dies.
func (s *pgServer) start(port int) error {
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	s.port = port
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := s.run("postgres", "-D", s.data, "-p", strconv.Itoa(s.port), "-k", s.sockDir,
		"-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300",
		"-c", "shared_buffers=32MB", "-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "log_min_messages=warning")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func() {
		cmd.Wait()
		close(s.exited)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.url("postgres", false))
		cancel()
		if err == nil {
			s.admin = conn
			s.version, _ = strconv.Atoi(conn.PgConn().ParameterStatus("server_version_num"))
			if s.version == 0 {
				conn.QueryRow(context.Background(), "SELECT current_setting('server_version_num')::int").Scan(&s.version)
			}
			return nil
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(s.logPath)
			return fmt.Errorf("postgres exited while starting: %s", log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("postgres did not accept connections within a minute: %v", err)
		}
	}
}

// stop shuts the server down (fast shutdown, then SIGKILL) and removes its
// directory.
func (s *pgServer) stop() {
	s.shutdown()
	os.RemoveAll(s.dir)
}

// shutdown stops the server as `pg_ctl stop -m fast` does (SIGINT: every
// session is terminated, then the server exits), SIGKILL after 15 s.
func (s *pgServer) shutdown() {
	s.mu.Lock()
	if s.admin != nil {
		s.admin.Close(context.Background())
		s.admin = nil
	}
	s.mu.Unlock()
	if s.cmd != nil {
		s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.exited:
		case <-time.After(15 * time.Second):
			s.cmd.Process.Kill()
			<-s.exited
		}
	}
}

// restart is `pg_ctl restart -m fast` with the server down for at least
// down in between, on the same port.
func (s *pgServer) restart(t testing.TB, down time.Duration) {
	t.Helper()
	s.shutdown()
	time.Sleep(down)
	if err := s.start(s.port); err != nil {
		t.Fatalf("restarting the server: %v", err)
	}
}

// ownServer starts a server for one test, stopped when it ends, for tests
// that stop or restart it.
func ownServer(t *testing.T) *pgServer {
	t.Helper()
	needServer(t)
	s, err := startServer()
	if err != nil {
		t.Fatalf("starting a second server: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			s.dumpLog()
		}
		s.stop()
	})
	return s
}

// dumpLog prints the end of the server's log, for a failed run.
func (s *pgServer) dumpLog() {
	log, err := os.ReadFile(s.logPath)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(log)), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	fmt.Fprintf(os.Stderr, "--- end of the PostgreSQL server log (%s):\n%s\n", s.logPath, strings.Join(lines, "\n"))
}

// url is a connection URL for database db, over the Unix socket or TCP.
func (s *pgServer) url(db string, tcp bool) string {
	if tcp {
		return fmt.Sprintf("postgres://xplock@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
	}
	return fmt.Sprintf("postgresql://xplock@/%s?host=%s&port=%d", db, s.sockDir, s.port)
}

// newDB creates an empty database for one test and returns its name.
func (s *pgServer) newDB(t testing.TB) string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dbs++
	name := fmt.Sprintf("t%d_%s", s.dbs, strings.ToLower(sanitize(t.Name())))
	if len(name) > 60 {
		name = name[:60]
	}
	create := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if s.version >= 150000 {
		create += " STRATEGY FILE_COPY" // cheaper than WAL-logging a copy of template1
	}
	if _, err := s.admin.Exec(context.Background(), create); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	return name
}

// exec runs SQL in database db.
func (s *pgServer) exec(t testing.TB, db, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), s.url(db, false))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// queryInt runs a query returning one integer in database db.
func (s *pgServer) queryInt(t testing.TB, db, sql string, args ...any) int64 {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), s.url(db, false))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int64
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func sanitize(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, name)
}

func TestMain(m *testing.M) {
	if role := os.Getenv(helperEnv); role != "" {
		os.Exit(runHelper(role))
	}
	server, serverErr = startServer()
	if serverErr != nil && notInstalled {
		fmt.Fprintf(os.Stderr, "postgres tests: %v; %s\n", serverErr, installHint)
	}
	code := m.Run()
	if server != nil {
		if code != 0 {
			server.dumpLog()
		}
		server.stop()
	}
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}
