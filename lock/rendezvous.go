package lock

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"sync"
	"time"
)

// Rendezvous is implemented by stores whose holders all run on one machine,
// as with a SQLite file. A holder that stays alive while it holds a lock
// (a Guard that renews) then listens on a socket file for its tenure, and
// waiters sleep on a connection to it until the holder lets go or dies,
// instead of waking at every change in the store, much as flock(1)'s
// waiters sleep in the kernel.
//
// The socket is only a hint. The store stays the only judge: a waiter
// looks at the key in the store before it tries again, and also looks
// while it sleeps, at least every 400 milliseconds, so a socket that lies
// costs it at most that delay. A socket that says nothing (a stopped
// process whose tenure is over may still listen) costs nothing: until the
// socket greets it as the tenure's, the waiter also wakes at every change
// in the store. Only users who may open the
// store reach the sockets: they live in a directory beside the store's
// file, owned like it and opened no wider than it (see Endpoint).
type Rendezvous interface {
	// RendezvousEndpoint says where key's holder listens on this machine:
	// the same place in every process that opens the same store. It never
	// creates anything, and fails when the store has no such place.
	RendezvousEndpoint(key string) (Endpoint, error)
}

// Endpoint is where a key's holder listens: the Unix socket file Name in
// the directory Dir. Dir is trusted only while it is owned like the store
// (UID, or GID where the store is writable by its group) and opened no
// wider than the store (Mode): a 0600 store gets a 0700 directory, a 0660
// one a 0770 one. A Dir that exists otherwise is not used, and waiters
// watch the store instead.
type Endpoint struct {
	Dir, Name string
	// UID, GID and Mode are the store file's owner, group and permission
	// bits.
	UID, GID uint32
	Mode     fs.FileMode
}

// dirPerm is the most the endpoint directory may allow: everything to each
// class of users that may write the store, nothing to the others.
func (e Endpoint) dirPerm() fs.FileMode {
	var perm fs.FileMode
	for _, class := range []fs.FileMode{0o700, 0o070, 0o007} {
		if e.Mode&class&0o222 != 0 {
			perm |= class
		}
	}
	return perm
}

// groupShared reports whether the store's group may write it.
func (e Endpoint) groupShared() bool { return e.Mode&0o020 != 0 }

// ownedLikeStore reports whether a file or process with uid and gid is one
// that only a user who may write the store could have made.
func (e Endpoint) ownedLikeStore(uid, gid uint32) bool {
	return uid == e.UID || (e.groupShared() && gid == e.GID) || e.Mode&0o002 != 0
}

// Timing of the rendezvous.
const (
	// beaconDelay: a Guard listens, and starts renewing and watching for
	// a break, only once its tenure has lasted this long, so that a short
	// uncontended tenure (the common library case) costs no socket, no
	// goroutine and no read of the store at all. A waiter that finds
	// nobody listening for a tenure younger than youngTenure looks and
	// dials again after pauses from minDialPause to maxDialPause, which
	// also bound how late it notices the release of such a short tenure.
	beaconDelay  = 5 * time.Millisecond
	youngTenure  = 50 * time.Millisecond
	minDialPause = time.Millisecond
	maxDialPause = 4 * time.Millisecond
	// A holder greets a waiter at once. One that has not within
	// helloPrompt may never (stopped, or not the holder): the waiter then
	// also sleeps on the store's changes until it greets. One that has not
	// within helloWait is left for the store.
	helloPrompt = 50 * time.Millisecond
	helloWait   = time.Second
	// notifyWait bounds NotifyHolder, which a `release --force` of a
	// stopped holder would otherwise wait on for nothing.
	notifyWait = 250 * time.Millisecond
)

var (
	// errNoEndpoint: nobody listens at the endpoint (yet, or any more).
	errNoEndpoint = errors.New("no holder listens at the endpoint")
	// errEndpointTaken: a live process already listens at the endpoint.
	errEndpointTaken = errors.New("the endpoint is taken")
)

// beacon is a live holder's endpoint, made once the tenure has lasted
// beaconDelay. Each waiter that connects is sent the tenure's token,
// so that it can tell a stale socket from the current holder's; closing
// the beacon wakes all of them. A process that changed the lock from
// outside the holder's Guard (a break, or a release by holder name) writes
// a byte to it, and the Guard looks at once.
type beacon struct {
	store Store
	key   string
	token int64
	// pokes receives a value (coalesced) when the Guard should look at the
	// store: a connection wrote, the beacon has just started listening (a
	// break before that was not heard of), or, when it cannot listen, the
	// store changed.
	pokes chan struct{}

	mu     sync.Mutex
	closed bool
	ln     *listener
	conns  map[net.Conn]bool
	// shared: another live process listens for this tenure (a re-entrant
	// acquisition), so letting go must tell it.
	shared bool
	// unwatch ends the store subscription of a beacon that cannot listen.
	unwatch context.CancelFunc
}

// newBeacon returns the beacon of the tenure with token, or nil when the
// store has no endpoints.
func newBeacon(s Store, key string, token int64) *beacon {
	if _, ok := s.(Rendezvous); !ok || !rendezvousSupported {
		return nil
	}
	b := &beacon{store: s, key: key, token: token, pokes: make(chan struct{}, 1)}
	go b.listen()
	return b
}

// listen starts listening, unless the beacon was closed first. A beacon
// that cannot listen watches the store instead, so that its Guard still
// hears of a break before its next renewal. It does its I/O unlocked, so
// that a release never waits for it.
func (b *beacon) listen() {
	e, err := b.store.(Rendezvous).RendezvousEndpoint(b.key)
	var ln *listener
	if err == nil {
		ln, err = listenEndpoint(e)
	}
	var unwatch context.CancelFunc
	if err != nil {
		unwatch = b.watchStore()
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		if ln != nil {
			ln.Close()
		}
		if unwatch != nil {
			unwatch()
		}
		return
	}
	b.ln, b.unwatch, b.shared = ln, unwatch, errors.Is(err, errEndpointTaken)
	if ln != nil {
		b.conns = map[net.Conn]bool{}
		go b.serve(e, ln)
	}
	b.mu.Unlock()
	// A break before now was not heard of.
	poke(b.pokes)
}

// watchStore pokes the Guard at every change in the store, until the
// returned function is called; nil when the store cannot be watched (then
// renewal alone notices a loss).
func (b *beacon) watchStore() context.CancelFunc {
	ctx, cancel := context.WithCancel(context.Background())
	changes, err := b.store.Subscribe(ctx)
	if err != nil {
		cancel()
		return nil
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-changes:
				poke(b.pokes)
			}
		}
	}()
	return cancel
}

func (b *beacon) serve(e Endpoint, ln *listener) {
	hello := binary.BigEndian.AppendUint64(nil, uint64(b.token))
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of descriptors, say: waiters time out on their hello
			// meanwhile and watch the store.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !trustedPeer(e, c) {
			c.Close()
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
		poke(b.pokes)
	}
}

// close wakes every waiter and removes the socket file. Call it once the
// store has the lock released (or the tenure is lost), so that the woken
// waiters find it free. It reports whether another process may listen for
// the same tenure.
func (b *beacon) close() (shared bool) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return b.shared
	}
	b.closed = true
	ln, conns, unwatch := b.ln, b.conns, b.unwatch
	b.conns = nil
	b.mu.Unlock()
	if unwatch != nil {
		unwatch()
	}
	if ln != nil {
		ln.Close()
	}
	for c := range conns {
		c.Close()
	}
	return b.shared
}

// poke signals ch without ever blocking; signals coalesce.
func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// NotifyHolder asks the live holder of key, if it listens on this machine,
// to look at the lock again. Call it after changing a lock from outside its
// holder's Guard (Store.Break, or Store.Release by holder name), so that the
// holder's Guard ends at once rather than at its next renewal. It never
// fails and never creates anything: a holder that cannot be reached finds
// out when it renews.
func NotifyHolder(ctx context.Context, s Store, key string) {
	r, ok := s.(Rendezvous)
	if !ok || !rendezvousSupported {
		return
	}
	e, err := r.RendezvousEndpoint(key)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, notifyWait)
	defer cancel()
	c, err := dialEndpoint(ctx, e)
	if err != nil {
		return
	}
	defer c.Close()
	// The hello first: a byte written before the holder greets could meet
	// a closed connection on its side and go unread. A holder that does not
	// greet soon (stopped, say) finds out when it runs again.
	c.SetDeadline(time.Now().Add(notifyWait))
	var hello [8]byte
	if _, err := io.ReadFull(c, hello[:]); err == nil {
		c.Write([]byte{'?'})
	}
}

// beaconConn is a waiter's connection to a holder's endpoint. A goroutine
// reads it and tells the waiter on events what the socket said, so that the
// waiter can sleep on it and on the store's changes at once.
type beaconConn struct {
	c net.Conn
	// events receives at most a beaconSlow, a beaconGreeted and then a
	// beaconWoke or beaconStale, in that order: it never fills.
	events chan beaconEvent
	// slow is set once the socket did not greet within helloPrompt.
	slow bool
}

// beaconEvent is what a beaconConn said.
type beaconEvent int

const (
	// beaconSlow: no hello within helloPrompt. A live holder greets at
	// once; one that does not may be a stopped process that still listens
	// though its tenure is over, which will never tell of a change.
	beaconSlow beaconEvent = iota
	// beaconGreeted: the holder greeted as the tenure waited on, and will
	// hang up when it lets go.
	beaconGreeted
	// beaconWoke: the holder hung up or greeted as a later tenure: the
	// lock may have changed hands.
	beaconWoke
	// beaconStale: the socket greeted as an earlier tenure (its holder has
	// not let go of it yet), or did not greet within helloWait.
	beaconStale
)

// newBeaconConn starts reading c, a connection made for the tenure token.
func newBeaconConn(c net.Conn, token int64) *beaconConn {
	bc := &beaconConn{c: c, events: make(chan beaconEvent, 3)}
	go bc.read(token, time.Now())
	return bc
}

// read reports what the socket says until it hangs up or is closed.
func (bc *beaconConn) read(token int64, dialed time.Time) {
	var hello [8]byte
	got, slow := 0, false
	for got < len(hello) {
		deadline := dialed.Add(helloWait)
		if !slow {
			deadline = dialed.Add(helloPrompt)
		}
		bc.c.SetReadDeadline(deadline)
		n, err := bc.c.Read(hello[got:])
		got += n
		switch {
		case err == nil:
		case !errors.Is(err, os.ErrDeadlineExceeded):
			bc.events <- beaconWoke
			return
		case !slow:
			slow = true
			bc.events <- beaconSlow
		default:
			bc.events <- beaconStale
			return
		}
	}
	switch t := int64(binary.BigEndian.Uint64(hello[:])); {
	case t < token:
		bc.events <- beaconStale
		return
	case t > token:
		bc.events <- beaconWoke
		return
	}
	bc.events <- beaconGreeted
	bc.c.SetReadDeadline(time.Time{})
	// A holder says nothing after its hello: anything else is noise, and
	// only the hang-up counts.
	var noise [64]byte
	for {
		if _, err := bc.c.Read(noise[:]); err != nil {
			bc.events <- beaconWoke
			return
		}
	}
}

func (bc *beaconConn) close() { bc.c.Close() }

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
