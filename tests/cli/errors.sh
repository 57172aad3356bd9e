#!/usr/bin/env bash
# Bad input gives a one-line error, exit status 2, and no results file.
# Usage: errors.sh NORMBENCH WORKDIR
set -u
nb=$1; work=$2
rm -rf "$work"; mkdir -p "$work"; cd "$work" || exit 1
fail=0
expect_error() {  # description, expected stderr fragment, command...
  local what=$1 frag=$2; shift 2
  rm -f out.csv
  "$@" >stdout.txt 2>stderr.txt
  local rc=$?
  if [ "$rc" -ne 2 ]; then echo "FAIL $what: exit $rc, expected 2"; fail=1; fi
  if [ "$(wc -l <stderr.txt)" -ne 1 ]; then echo "FAIL $what: stderr is not one line:"; cat stderr.txt; fail=1; fi
  if ! grep -qF -- "$frag" stderr.txt; then echo "FAIL $what: stderr lacks '$frag':"; cat stderr.txt; fail=1; fi
  if [ -e out.csv ]; then echo "FAIL $what: a results file was written"; fail=1; fi
  [ "$fail" -eq 0 ] && echo "ok   $what: $(cat stderr.txt)"
}
printf '[[cases]\nmethods = ["batchnorm"]\n' >malformed.toml
printf '[[cases]]\nmethods = ["bnorm"]\nc = 4\nn = 2\n' >unknown_method.toml
printf '[[cases]]\nmethods = ["groupnorm"]\nc = 30\nn = 2\ngroups = 4\n' >groups.toml
printf '[[cases]]\nmethods = ["batchnorm"]\npasses = ["fwd_train"]\nc = 8\nn = 1\n' >m1.toml
printf '[[cases]]\nmethods = ["batchnorm"]\nc = -8\nn = 2\n' >negative.toml
expect_error "malformed TOML" "malformed TOML" "$nb" sweep malformed.toml --out out.csv
expect_error "unknown method in a config" "unknown method 'bnorm'" "$nb" sweep unknown_method.toml --out out.csv
expect_error "C not divisible by G" "not divisible by num_groups=4" "$nb" sweep groups.toml --out out.csv
expect_error "batchnorm training with N*H*W == 1" "more than 1 value per channel" "$nb" sweep m1.toml --out out.csv
expect_error "negative size in a config" ".c: expected a positive integer" "$nb" sweep negative.toml --out out.csv
expect_error "missing config file" "cannot read the config file" "$nb" sweep nothere.toml --out out.csv
expect_error "unknown method on the command line" "unknown method 'bnorm'" "$nb" sweep --methods bnorm --out out.csv
expect_error "unknown backend" "unknown backend 'nope'" "$nb" run batchnorm:fwd_train:f32:nchw:n2c4h2w2 --backends nope --out out.csv
expect_error "negative size in a repro" "sizes must be positive" "$nb" run batchnorm:fwd_train:f32:nchw:n-2c4h2w2 --out out.csv
expect_error "repro with C not divisible by G" "not divisible" "$nb" run groupnorm:fwd_train:f32:nchw:n2c6h2w2g4 --out out.csv
expect_error "repro batchnorm M == 1" "more than 1 value per channel" "$nb" run batchnorm:fwd_train:f32:nchw:n1c4h1w1 --out out.csv
exit $fail
