package sqlite

// watchedPaths: inotify watches a directory as cheaply as a file.
var watchedPaths = watchDirectory
