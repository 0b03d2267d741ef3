//go:build !linux

package sqlite

// fileID is empty: holders' sockets are Linux-only (see lock.Rendezvous).
func fileID(string) string { return "" }
