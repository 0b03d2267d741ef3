// Command pauseproxy is a TCP proxy on the loopback interface that can
// stop forwarding on command, to simulate a network partition between
// PostgreSQL clients and their server. Tests start it as a real process.
//
//	pauseproxy -target 127.0.0.1:5432
//
// It prints two lines on stdout once it listens:
//
//	proxy 127.0.0.1:PORT     (connect clients here)
//	control 127.0.0.1:PORT   (send commands here)
//
// Commands are lines sent to the control address; each is answered "ok"
// (or "error ...") once in force:
//
//	pause        forward nothing on any connection, old or new, in either
//	             direction (a full partition: nothing is lost or closed,
//	             bytes and closes wait for resume)
//	pause-query  the same, except for connections that have sent LISTEN
//	             (PostgreSQL notifications still flow, queries do not)
//	resume       forward everything again
//	drop         close every connection at once (as a server that died)
//	count        answer "ok N": how many connections are open
//
// It listens on 127.0.0.1 only.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"
	"sync"
)

// Partition modes.
const (
	modeFlow = iota
	modePauseAll
	modePauseQuery
)

type proxy struct {
	target string

	mu    sync.Mutex
	cond  *sync.Cond
	mode  int
	conns map[*link]bool
}

// link is one proxied connection.
type link struct {
	client, server net.Conn
	// listening is set once the client sent LISTEN.
	listening bool
}

func main() {
	target := flag.String("target", "", "`HOST:PORT` to forward to (required)")
	listen := flag.String("listen", "127.0.0.1:0", "address to accept clients on (loopback only)")
	control := flag.String("control", "127.0.0.1:0", "address to accept commands on (loopback only)")
	flag.Parse()
	if *target == "" {
		fmt.Fprintln(os.Stderr, "pauseproxy: -target HOST:PORT is required")
		os.Exit(2)
	}
	for _, addr := range []string{*listen, *control} {
		if host, _, err := net.SplitHostPort(addr); err != nil || !net.ParseIP(host).IsLoopback() {
			fmt.Fprintf(os.Stderr, "pauseproxy: %s: listen on a loopback address only\n", addr)
			os.Exit(2)
		}
	}
	p := &proxy{target: *target, conns: map[*link]bool{}}
	p.cond = sync.NewCond(&p.mu)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	ctl, err := net.Listen("tcp", *control)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("proxy %s\ncontrol %s\n", ln.Addr(), ctl.Addr())
	go p.serveControl(ctl)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go p.forward(c)
	}
}

func (p *proxy) serveControl(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			lines := bufio.NewScanner(c)
			for lines.Scan() {
				fmt.Fprintln(c, p.command(strings.TrimSpace(lines.Text())))
			}
		}()
	}
}

func (p *proxy) command(cmd string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch cmd {
	case "pause":
		p.mode = modePauseAll
	case "pause-query":
		p.mode = modePauseQuery
	case "resume":
		p.mode = modeFlow
		p.cond.Broadcast()
	case "drop":
		for l := range p.conns {
			l.close()
		}
	case "count":
		return fmt.Sprintf("ok %d", len(p.conns))
	default:
		return "error unknown command " + cmd
	}
	return "ok"
}

// gate blocks while l may not forward.
func (p *proxy) gate(l *link) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.mode == modePauseAll || p.mode == modePauseQuery && !l.listening {
		p.cond.Wait()
	}
}

func (p *proxy) forward(client net.Conn) {
	l := &link{client: client}
	// A connection made during a partition goes nowhere until it ends.
	p.gate(l)
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	l.server = server
	p.mu.Lock()
	p.conns[l] = true
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(l, client, server, true) })
	wg.Go(func() { p.pipe(l, server, client, false) })
	wg.Wait()
	l.close()
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
}

var listenSQL = []byte("LISTEN ")

// pipe copies src to dst through the gate; fromClient marks the client's
// direction, watched for LISTEN. An end of src is passed on as a close of
// dst's writing half, through the gate too.
func (p *proxy) pipe(l *link, src, dst net.Conn, fromClient bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if fromClient && n > 0 && bytes.Contains(buf[:n], listenSQL) {
			p.mu.Lock()
			l.listening = true
			p.mu.Unlock()
		}
		p.gate(l)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			if tcp, ok := dst.(*net.TCPConn); ok && errors.Is(err, io.EOF) {
				tcp.CloseWrite()
			} else {
				dst.Close()
			}
			return
		}
	}
}

func (l *link) close() {
	l.client.Close()
	if l.server != nil {
		l.server.Close()
	}
}
