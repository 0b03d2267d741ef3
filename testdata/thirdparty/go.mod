// A program outside xplock that uses its library, as a third party would:
// TestThirdPartyModule (module_test.go) builds and runs it against a copy
// of this directory, with the replace below pointing at the repository and
// the repository's go.sum and requirements added.
module example.com/deployer

go 1.25.0

require github.com/xplock/xplock v0.0.0

replace github.com/xplock/xplock => ../..
