package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SQLSTATE codes the store acts on.
const (
	serializationFailure = "40001"
	deadlockDetected     = "40P01"
	insufficientPrivs    = "42501"
	undefinedTable       = "42P01"
	invalidSchemaName    = "3F000"
	adminShutdown        = "57P01"
	crashShutdown        = "57P02"
	cannotConnectNow     = "57P03"
	tooManyConnections   = "53300"
)

func pgErrorCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// rolledBack reports whether the server rolled a decision back for a reason
// that sending it again can cure (serialization failure, deadlock).
func rolledBack(err error) bool {
	switch pgErrorCode(err) {
	case serializationFailure, deadlockDetected:
		return true
	}
	return false
}

// transient reports whether err is a connection fault that a new connection
// may cure: the server shut the connection down or is restarting, the
// connection was reset or closed, the server could not be reached for now.
// A request that failed this way may or may not have been carried out.
func transient(err error) bool {
	switch code := pgErrorCode(err); {
	case code == adminShutdown || code == crashShutdown || code == cannotConnectNow || code == tooManyConnections:
		return true
	case strings.HasPrefix(code, "08"): // connection exceptions
		return true
	case code != "":
		return false // the server answered: the request itself was refused
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) || errors.As(err, &netErr) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, pgconn.ErrConnClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) || pgconn.Timeout(err)
}

// restarting reports whether err says that the server is shutting down,
// starting up or was restarted under the connection.
func restarting(err error) bool {
	switch pgErrorCode(err) {
	case adminShutdown, crashShutdown, cannotConnectNow:
		return true
	}
	return false
}

// UnreachableError reports that the store could not be reached, or did not
// answer, from Since until the caller's bound ended.
type UnreachableError struct {
	// Server names the server and who connects, without the password.
	Server string
	Since  time.Time
	// Err is the last failure seen; nil when the server simply did not
	// answer.
	Err error
}

func (e *UnreachableError) Error() string {
	for_ := time.Since(e.Since).Round(100 * time.Millisecond)
	msg := fmt.Sprintf("PostgreSQL at %s unreachable since %s (%s)", e.Server, e.Since.Format("15:04:05.000"), for_)
	switch {
	case e.Err == nil || errors.Is(e.Err, context.DeadlineExceeded) || pgconn.Timeout(e.Err):
		msg += ": no answer from the server (a network partition, or a server that stopped)"
	case restarting(e.Err):
		msg += ": the server is restarting or shutting down: " + e.Err.Error()
	default:
		msg += ": " + faultSummary(e.Err)
	}
	return msg
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// faultSummary says in a few words what a transient fault was.
func faultSummary(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused (the server is down or restarting): " + err.Error()
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, pgconn.ErrConnClosed):
		return "the connection was closed (the server restarted, or the connection was killed): " + err.Error()
	}
	return err.Error()
}

// describeConnError turns an error from the first contact with the server,
// or a refusal of the server's, into one that says what to check. The
// password is never shown.
func describeConnError(cc *pgx.ConnConfig, err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	where := serverAddress(cc)
	who := fmt.Sprintf("user %q, database %q", cc.User, cc.Database)
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		var check string
		switch {
		case pe.Code == "28P01" || pe.Code == "28000":
			check = "check the user name and password in the URL, and pg_hba.conf on the server"
		case pe.Code == "3D000":
			check = fmt.Sprintf("check the database name in the URL, or create database %q", cc.Database)
		case pe.Code == insufficientPrivs:
			check = fmt.Sprintf("role %q lacks a privilege xplock needs (%s); grant it SELECT, INSERT, UPDATE and DELETE on the xplock_ tables "+
				"(and USAGE, plus CREATE to create them, on their schema), or connect as a role that has them", cc.User, pe.Message)
		case pe.Code == invalidSchemaName:
			check = "no schema named in search_path exists to hold the xplock_ tables; create that schema, or name an existing one " +
				"in the URL (search_path=SCHEMA)"
		case pe.Code == tooManyConnections:
			check = "the server has too many connections; raise max_connections or use fewer clients"
		case restarting(err):
			check = "the server is restarting or shutting down; try again once it is up"
		case strings.HasPrefix(pe.Code, "08"):
			check = "check the host, port and sslmode in the URL"
		}
		if check != "" {
			return fmt.Errorf("PostgreSQL at %s (%s): %s: %w", where, who, check, err)
		}
		return fmt.Errorf("PostgreSQL at %s (%s): %w", where, who, err)
	}
	var check string
	var dnsErr *net.DNSError
	var tlsErr *tls.RecordHeaderError
	switch {
	case errors.As(err, &dnsErr):
		check = "check the host name in the URL"
	case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT):
		check = "check that PostgreSQL is running and listening there: the host and port in the URL, listen_addresses and port on the server"
	case errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) || errors.Is(err, syscall.ETIMEDOUT) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH):
		check = "check the host and port in the URL and that no firewall is in the way (connect_timeout in the URL sets how long to try)"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
		check = "the server closed the connection (it may be restarting); try again, and check sslmode and pg_hba.conf if it persists"
	case errors.As(err, &tlsErr) || strings.Contains(err.Error(), "tls") || strings.Contains(err.Error(), "SSL"):
		check = "check sslmode and the certificates named in the URL"
	default:
		check = "check the host, port, user, password and database name in the URL"
	}
	return fmt.Errorf("cannot reach PostgreSQL at %s (%s): %s: %w", where, who, check, err)
}

// serverAddress names where cc connects, without credentials.
func serverAddress(cc *pgx.ConnConfig) string {
	if strings.HasPrefix(cc.Host, "/") {
		return fmt.Sprintf("Unix socket %s/.s.PGSQL.%d", cc.Host, cc.Port)
	}
	return net.JoinHostPort(cc.Host, fmt.Sprint(cc.Port))
}

// masked replaces a password wherever it is shown.
const masked = "xxxxx"

var (
	urlPassword   = regexp.MustCompile(`^([a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@:]*:)(.*)(@[^@]*)$`)
	paramPassword = regexp.MustCompile(`((?:^|[?&\s])password=)('[^']*'|[^&\s]*)`)
)

// Redact returns a connection string (a postgres:// URL or key=value
// pairs) with its password masked, for messages.
func Redact(connString string) string {
	if u, err := url.Parse(connString); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), masked)
			connString = strings.Replace(u.String(), ":"+url.QueryEscape(masked)+"@", ":"+masked+"@", 1)
		}
	} else if err != nil {
		// Unparsable: mask everything between the user name and the last @
		// of the authority.
		authority, rest, _ := strings.Cut(connString, "?")
		if m := urlPassword.FindStringSubmatch(authority); m != nil {
			connString = m[1] + masked + m[3]
			if rest != "" {
				connString += "?" + rest
			}
		}
	}
	return paramPassword.ReplaceAllString(connString, "${1}"+masked)
}

// redactedError masks a password that a driver error might carry in its
// message (a connection string echoed back, say).
type redactedError struct {
	err      error
	password string
}

func (e *redactedError) Error() string {
	return strings.ReplaceAll(e.err.Error(), e.password, masked)
}

func (e *redactedError) Unwrap() error { return e.err }

// redact wraps err so that its message never shows password.
func redact(err error, password string) error {
	// A password of a character or two would mangle every message; pgx
	// itself never echoes one.
	if err == nil || len(password) < 3 || !strings.Contains(err.Error(), password) {
		return err
	}
	return &redactedError{err: err, password: password}
}
