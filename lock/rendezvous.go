package lock

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"
)

// Rendezvous is implemented by stores whose holders all run on one machine,
// as with a SQLite file. A holder that stays alive while it holds a lock
// (a Guard that renews) then listens on a local socket for its tenure, and
// waiters sleep on a connection to it until the holder lets go or dies,
// instead of waking at every change in the store as flock(1)'s waiters
// sleep in the kernel. The store stays the only judge: the socket only
// says when to look again, and without one waiting works as before.
type Rendezvous interface {
	// RendezvousAddress names key's socket: the same in every process
	// that opens the same store on this machine.
	RendezvousAddress(key string) string
}

// The sockets are in Linux's abstract namespace, which needs no file and
// vanishes with the process; elsewhere waiters watch the store.
var rendezvousSupported = runtime.GOOS == "linux"

func rendezvousAddress(s Store, key string) string {
	r, ok := s.(Rendezvous)
	if !ok || !rendezvousSupported {
		return ""
	}
	return "@" + r.RendezvousAddress(key)
}

// beacon is a live holder's listening socket. Each waiter that connects is
// sent the tenure's token, so that it can tell a stale socket from the
// current holder's; closing the beacon wakes all of them. A process that
// changed the lock from outside the holder's Guard (a break, or a release
// by holder name) writes a byte to it, and the Guard looks at once.
type beacon struct {
	ln    net.Listener
	token int64
	// pokes receives a value (coalesced) whenever a connection writes.
	pokes chan struct{}

	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

// listenBeacon listens at address for the tenure with token, or returns nil
// when the address is taken (a former holder that has not let go of it
// yet) or sockets are not available.
func listenBeacon(address string, token int64) *beacon {
	if address == "" {
		return nil
	}
	ln, err := net.Listen("unix", address)
	if err != nil {
		return nil
	}
	b := &beacon{ln: ln, token: token, pokes: make(chan struct{}, 1), conns: map[net.Conn]bool{}}
	go b.serve()
	return b
}

func (b *beacon) serve() {
	hello := binary.BigEndian.AppendUint64(nil, uint64(b.token))
	for {
		c, err := b.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of descriptors, say: waiters time out on their hello
			// meanwhile and watch the store.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.conns[c] = true
		b.mu.Unlock()
		go b.converse(c, hello)
	}
}

// converse greets a connection and listens to it until it closes.
func (b *beacon) converse(c net.Conn, hello []byte) {
	defer func() {
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
		c.Close()
	}()
	c.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := c.Write(hello); err != nil {
		return
	}
	buf := make([]byte, 1)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
		select {
		case b.pokes <- struct{}{}:
		default:
		}
	}
}

// close wakes every waiter. Call it once the store has the lock released
// (or the tenure is lost), so that the woken waiters find it free.
func (b *beacon) close() {
	b.mu.Lock()
	b.closed = true
	conns := b.conns
	b.conns = nil
	b.mu.Unlock()
	b.ln.Close()
	for c := range conns {
		c.Close()
	}
}

// NotifyHolder asks the live holder of key, if it has a socket on this
// machine, to look at the lock again. Call it after changing a lock from
// outside its holder's Guard (Store.Break, or Store.Release by holder
// name), so that the holder's Guard ends at once rather than at its next
// renewal. It never fails: a holder that cannot be reached finds out when
// it renews.
func NotifyHolder(ctx context.Context, s Store, key string) {
	address := rendezvousAddress(s, key)
	if address == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, notifyWait)
	defer cancel()
	c, err := dialBeacon(ctx, address, time.Time{})
	if err != nil {
		return
	}
	defer c.Close()
	// The hello first: a byte written before the holder greets could
	// meet a closed connection on its side and go unread. A holder that
	// does not greet soon (stopped, say) finds out when it runs again.
	c.SetDeadline(time.Now().Add(notifyWait))
	var hello [8]byte
	if _, err := io.ReadFull(c, hello[:]); err == nil {
		c.Write([]byte{'?'})
	}
}

const (
	// notifyWait bounds NotifyHolder, which a `release --force` of a
	// stopped holder would otherwise wait on for nothing.
	notifyWait = 250 * time.Millisecond
	// helloWait bounds the wait for a holder's hello. A holder that does
	// not answer in time (stopped, or not the holder) is left for the
	// store's change notifications.
	helloWait = time.Second
	// youngTenure: a holder that acquired this recently may not be
	// listening yet, so a refused connection is tried again for a while.
	youngTenure = 20 * time.Millisecond
)

// errNoBeacon means the holder has no socket to sleep on: it is not a live
// process (`xplock acquire` without a command), it is in another network
// namespace, or it does not answer.
var errNoBeacon = errors.New("no beacon")

// sleepOnHolder blocks until the holder described by current lets go,
// dies, or reaches its lease end, or ctx ends (its error is returned). It
// returns errNoBeacon when there is no live holder's socket to sleep on.
func sleepOnHolder(ctx context.Context, address string, current State, now time.Time) error {
	leaseEnd := time.Now().Add(current.ExpiresAt.Sub(now) + time.Millisecond)
	c, err := dialBeacon(ctx, address, time.Now().Add(youngTenure-now.Sub(current.Since)))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errNoBeacon
	}
	defer c.Close()
	// ctx ending sets a deadline of now; setDeadline checks ctx after each
	// deadline it sets, lest it replace that one.
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	setDeadline := func(t time.Time) error {
		c.SetReadDeadline(t)
		return ctx.Err()
	}

	var hello [8]byte
	if err := setDeadline(earliest(time.Now().Add(helloWait), leaseEnd)); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(leaseEnd):
			return nil // the lease ended: look again
		}
		// No hello: the holder let go just now, or this is not a holder
		// (a process that accepts and hangs up would otherwise have the
		// waiter try again and again at once).
		return errNoBeacon
	}
	if int64(binary.BigEndian.Uint64(hello[:])) != current.Token {
		// Another tenure's socket: a new holder's (so the lock changed
		// hands) or a stale one's. Either way the store says more.
		return errNoBeacon
	}
	if err := setDeadline(leaseEnd); err != nil {
		return err
	}
	var b [1]byte
	c.Read(b[:]) // returns at EOF (the holder let go or died) or the lease end
	return ctx.Err()
}

// dialBeacon connects to address, trying again until retryUntil while the
// connection is refused: a holder that has just acquired may not be
// listening yet.
func dialBeacon(ctx context.Context, address string, retryUntil time.Time) (net.Conn, error) {
	var d net.Dialer
	pause := time.Millisecond
	for {
		c, err := d.DialContext(ctx, "unix", address)
		if err == nil || ctx.Err() != nil || time.Now().Add(pause).After(retryUntil) {
			return c, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pause):
		}
		pause *= 2
	}
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
