// Command gohello is the smallest Go program: the start-up floor of any Go
// command, measured by scripts/bench beside flock(1).
package main

import "os"

func main() { os.Stdout.WriteString("hello\n") }
