// Command nvmefs serves namespaces over NVMe/TCP (nvmefs serve) and, through
// later commands, mounts remote namespaces as files.
//
// Each command lives in its own file as a *command in the commands list; the
// dispatcher here parses its flags, prints its usage for --help, and maps
// errors to exit statuses: 0 success, 1 failure, 2 bad usage.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// command is one `nvmefs NAME` subcommand.
type command struct {
	name    string
	args    string // synopsis after the name, e.g. "[flags]"
	summary string // one line for the command list
	details string // paragraphs printed by --help above the flags
	// setup defines the command's flags on fs and returns the function
	// that runs the command once they are parsed, with the remaining
	// arguments.
	setup func(fs *pflag.FlagSet) func(e *env, args []string) error
}

// env is what a command may touch of the process.
type env struct {
	stdout, stderr io.Writer
}

// commands are the subcommands, in the order `nvmefs help` lists them.
// A new command adds itself here.
var commands = []*command{
	serveCommand,
}

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// usageError is an error in how nvmefs was invoked (exit status 2).
type usageError struct{ error }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func main() {
	os.Exit(run(os.Args[1:], &env{stdout: os.Stdout, stderr: os.Stderr}))
}

// run runs nvmefs with the arguments after the program name and returns the
// exit status.
func run(args []string, e *env) int {
	if len(args) == 0 {
		printUsage(e.stderr)
		return 2
	}
	switch name := args[0]; name {
	case "help", "-h", "--help":
		if len(args) > 1 && name == "help" {
			c := findCommand(args[1])
			if c == nil {
				fmt.Fprintf(e.stderr, "nvmefs help: unknown command %q\n", args[1])
				printUsage(e.stderr)
				return 2
			}
			fs, _ := newFlagSet(c)
			printCommandUsage(e.stdout, c, fs)
			return 0
		}
		printUsage(e.stdout)
		return 0
	}
	c := findCommand(args[0])
	if c == nil {
		if strings.HasPrefix(args[0], "-") {
			fmt.Fprintf(e.stderr, "nvmefs: a command comes before flags, got %q\n", args[0])
		} else {
			fmt.Fprintf(e.stderr, "nvmefs: unknown command %q\n", args[0])
		}
		fmt.Fprintln(e.stderr, "Run 'nvmefs help' for the list of commands.")
		return 2
	}
	fs, runCmd := newFlagSet(c)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			printCommandUsage(e.stdout, c, fs)
			return 0
		}
		return fail(e, c, usageError{err})
	}
	if err := runCmd(e, fs.Args()); err != nil {
		return fail(e, c, err)
	}
	return 0
}

// fail reports err and returns its exit status.
func fail(e *env, c *command, err error) int {
	fmt.Fprintf(e.stderr, "nvmefs %s: %v\n", c.name, err)
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(e.stderr, "Run 'nvmefs %s --help' for usage.\n", c.name)
		return 2
	}
	return 1
}

// newFlagSet returns c's flags, in the order c defines them, and the
// function that runs c once they are parsed.
func newFlagSet(c *command) (*pflag.FlagSet, func(*env, []string) error) {
	fs := pflag.NewFlagSet("nvmefs "+c.name, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard) // run reports parse errors itself, once
	return fs, c.setup(fs)
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, `nvmefs mounts remote NVMe/TCP namespaces as plain files and serves
files, block devices and memory as NVMe/TCP namespaces.

Usage: nvmefs <command> [flags]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-10s %s\n", "help", "show this help, or a command's with 'nvmefs help <command>'")
	fmt.Fprint(w, "\nRun 'nvmefs <command> --help' for a command's flags.\n")
}

func printCommandUsage(w io.Writer, c *command, fs *pflag.FlagSet) {
	fmt.Fprintf(w, "Usage: nvmefs %s %s\n\n%s\n", c.name, c.args, strings.TrimSpace(c.details))
	if u := fs.FlagUsages(); u != "" {
		fmt.Fprintf(w, "\nFlags:\n%s", u)
	}
}
