//go:build !linux

package lock

import (
	"context"
	"errors"
	"net"
)

// Endpoints need SO_PEERCRED; elsewhere waiters watch the store.
const rendezvousSupported = false

var errUnsupported = errors.New("holders' endpoints are Linux-only")

type listener struct{ net.Listener }

func listenEndpoint(Endpoint) (*listener, error) { return nil, errUnsupported }

func dialEndpoint(context.Context, Endpoint) (net.Conn, error) { return nil, errUnsupported }

func trustedPeer(Endpoint, net.Conn) bool { return false }
