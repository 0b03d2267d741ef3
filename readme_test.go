package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// readmeSkips are the README's sh blocks that cannot run in a test, by
// their first line, with the reason. A block the README marks itself
// (see readmeMarker) needs no entry here.
var readmeSkips = map[string]string{
	"go run . acquire demo -H me --ttl 30s && go run . status   # the tool, on its default SQLite store":        "builds the module and runs the whole test suite",
	"xplock acquire backup -H backup-cron -n -E 0 -c 'pg_dump app > /backup/app.sql'":                           "needs pg_dump and writes /backup",
	"xplock watch deploy --until free --timeout 10m   # 0 once free, 4 on timeout":                              "its second line waits for two changes nobody makes",
	"xplock acquire deploy -H ci-runner-3 --db 'postgres://xplock:secret@db.internal:5432/ops?sslmode=require'": "needs the server db.internal",
	"xplock man /usr/local/share/man/man1 && man xplock-acquire":                                                "writes a system directory and needs man",
	"source <(xplock completion bash)          # bash, this shell":                                              "bash only, and writes system directories",
}

// readmeMarker is a comment the README may put on the line before a
// block's fence: <!-- readme-test: skip REASON --> or
// <!-- readme-test: exit N --> (the exit code the block claims; 0 when
// unmarked).
var readmeMarker = regexp.MustCompile(`^<!-- readme-test: (skip|exit (\d+))\b.*-->$`)

// readmeBlock is one fenced sh block of the README.
type readmeBlock struct {
	line int // of the first line of code
	code string
	skip string // why it does not run; "" when it does
	exit int
}

// readmeBlocks finds the ```sh blocks of a Markdown file, indented ones
// (in list items) included.
func readmeBlocks(t *testing.T, path string) []readmeBlock {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		blocks         []readmeBlock
		cur            *readmeBlock
		indent, marker string
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case cur != nil && trimmed == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.code += strings.TrimPrefix(line, indent) + "\n"
		case strings.HasPrefix(trimmed, "```sh"):
			indent = line[:len(line)-len(strings.TrimLeft(line, " "))]
			cur = &readmeBlock{line: n + 1}
			if m := readmeMarker.FindStringSubmatch(marker); m != nil {
				if m[2] == "" {
					cur.skip = "marked skip in the README"
				} else {
					cur.exit, _ = strconv.Atoi(m[2])
				}
			}
		}
		if trimmed != "" {
			marker = trimmed
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s: the block from line %d is never closed", path, cur.line)
	}
	return blocks
}

// TestREADMEExamples runs the README's shell examples, in order, with the
// real binary against one fresh store, as a newcomer trying them would;
// each must end with the exit code it claims. ./build-report, which the
// examples call for their critical section, is a stub.
func TestREADMEExamples(t *testing.T) {
	var script, files strings.Builder
	unused := make(map[string]bool, len(readmeSkips))
	for first := range readmeSkips {
		unused[first] = true
	}
	ran := 0
	for i, b := range readmeBlocks(t, "README.md") {
		first, _, _ := strings.Cut(b.code, "\n")
		if why, ok := readmeSkips[first]; ok {
			delete(unused, first)
			b.skip = why
		}
		if b.skip != "" {
			t.Logf("README.md:%d: not run: %s", b.line, b.skip)
			continue
		}
		name := fmt.Sprintf("block%d.sh", i)
		fmt.Fprintf(&script, "# README.md:%d\nexits %d sh -e %s\n", b.line, b.exit, name)
		fmt.Fprintf(&files, "-- %s --\n%s", name, b.code)
		ran++
	}
	for first := range unused {
		t.Errorf("readmeSkips names a block the README no longer has: %q", first)
	}
	if ran == 0 {
		t.Fatal("no README example ran")
	}
	dir := t.TempDir()
	archive := "chmod 755 build-report\n" + script.String() +
		"-- build-report --\n#!/bin/sh\necho report built\n" + files.String()
	if err := os.WriteFile(filepath.Join(dir, "readme.txtar"), []byte(archive), 0o644); err != nil {
		t.Fatal(err)
	}
	params := scriptParams()
	params.Dir = dir
	testscript.Run(t, params)
}
