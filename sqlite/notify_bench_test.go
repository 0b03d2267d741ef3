package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
)

// BenchmarkCommitHeard: one commit by another store and the subscriber
// hearing of it, through the file watch and, as the peer, through polling
// PRAGMA data_version (the fallback where files cannot be watched).
//
//	go test -run '^$' -bench CommitHeard -benchtime 2000x ./sqlite
func BenchmarkCommitHeard(b *testing.B) {
	for name, subscribe := range map[string]func(*Store, context.Context) (<-chan struct{}, error){
		"watch": (*Store).subscribe,
		"poll":  (*Store).pollDataVersion,
	} {
		b.Run(name, func(b *testing.B) {
			ctx := b.Context()
			path := filepath.Join(b.TempDir(), "locks.db")
			writer, err := Open(ctx, path, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer writer.Close()
			looker, err := Open(ctx, path, Options{ReadOnly: true})
			if err != nil {
				b.Fatal(err)
			}
			defer looker.Close()
			changes, err := subscribe(looker, ctx)
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; b.Loop(); i++ {
				var err error
				if i%2 == 0 {
					_, err = writer.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "h", TTL: time.Minute, Checked: true})
				} else {
					_, err = writer.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "h", Acknowledge: true})
				}
				if err != nil {
					b.Fatal(err)
				}
				<-changes
			}
		})
	}
}
