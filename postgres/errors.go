package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SQLSTATE codes the store acts on.
const (
	serializationFailure = "40001"
	deadlockDetected     = "40P01"
	undefinedTable       = "42P01"
)

func pgErrorCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// retryable reports whether a decision can be sent again: the server rolled
// it back (serialization failure, deadlock), or it never left this process.
func retryable(err error) bool {
	switch pgErrorCode(err) {
	case serializationFailure, deadlockDetected:
		return true
	}
	return pgconn.SafeToRetry(err)
}

// describeConnError turns an error from connecting or from the first
// queries into one that says what to check. The password is never shown.
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
		case pe.Code == "42501" || pe.Code == "3F000":
			check = fmt.Sprintf("user %q needs to be able to create and write the xplock_ tables in the first schema of its search_path (or an administrator creates them by running xplock once)", cc.User)
		case pe.Code == "53300":
			check = "the server has too many connections; raise max_connections or use fewer clients"
		case strings.HasPrefix(pe.Code, "57P"):
			check = "the server is starting up or shutting down; try again"
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
