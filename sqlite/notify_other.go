//go:build !linux

package sqlite

// watchedPaths: kqueue would open every file of a watched directory.
var watchedPaths = watchFiles
