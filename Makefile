# bpfstats tracker. "sudo make run" and "sudo make test" are the quick start.

GO        ?= go
CLANG     ?= clang-19
BIN       := bin/tracker
PREFIX    ?= /usr/local
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
RUN_ARGS  ?= --print
KERNEL    ?= 5.10 6.1 6.12

export BPF2GO_ROOT := $(CURDIR)
# Static binaries: no dynamic loader or libc to map and relocate at every
# start (about 5 ms of each command's start-up), nothing to match on the
# target machine. Nothing here uses cgo.
CGO_ENABLED ?= 0
export CGO_ENABLED

.PHONY: all build run test unittest lint vmtest vmtest-docs bench fleetbench demo generate check-generate vmlinux install uninstall installcheck clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tracker

## run: build and start the daemon with an embedded NATS server, printing the table.
run: build
	./$(BIN) run $(RUN_ARGS)

## test: everything: unit tests, host kernel tests (as root), the qemu kernel matrix.
test: lint unittest installcheck vmtest

## lint: go vet, staticcheck, no file over 500 lines or function over 80, and no
## production code that only tests reach.
# deadcode starts from the commands; packages that exist for tests and the
# generated bindings are left out of its report.
DEADCODE_IGNORE := internal/testgadget/|internal/testutil/|metricstest/|_bpfel\.go:
lint:
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	$(GO) run ./test/linelimits
	@out=$$($(GO) tool deadcode ./cmd/... ./examples/... ./test/bench | grep -Ev '$(DEADCODE_IGNORE)' || true); \
	if [ -n "$$out" ]; then echo "deadcode: production functions no command reaches:"; echo "$$out"; exit 1; fi

unittest:
	# -p 1: the packages' tests share one kernel; some compare its whole
	# program list, which another package's burst of loads would disturb.
	$(GO) test -p 1 -count=1 -timeout 20m ./...

## vmtest: the fentry source in qemu-booted Debian kernels (KERNEL="5.10 6.1 6.12");
## with 6.1, also the systemd unit under systemd as PID 1 (test/vm/systemd.sh).
vmtest:
	./test/vm/run.sh $(KERNEL)

## vmtest-docs: the kernel matrix, writing its freshness figures (fentry and
## perf, per kernel) to docs/vmtest.md.
vmtest-docs:
	VMTEST_REPORT=docs/vmtest.md ./test/vm/run.sh $(KERNEL)

bench:
	./test/bench/run.sh

## fleetbench: the fleet consumers against 100, 1000 and 10000 simulated nodes
## on a 3-server loopback cluster; rewrites the measurements in docs/fleet.md.
fleetbench:
	$(GO) build -trimpath -o bin/tracker ./cmd/tracker
	$(GO) build -trimpath -o bin/nats-server github.com/nats-io/nats-server/v2
	$(GO) build -trimpath -o bin/fleetbench ./test/fleetbench
	timeout 10m ./bin/fleetbench -tracker bin/tracker -nats-server bin/nats-server -out docs/fleet.md $(FLEETBENCH_ARGS)

## demo: start the two example gadgets, labelled as in the seed's guide.
demo:
	./examples/demo.sh

## generate: rebuild the committed bpf2go output with the pinned clang.
generate:
	$(GO) generate ./...

## check-generate: fail when the committed generated files differ from a fresh build.
check-generate: generate
	git diff --exit-code -- '*_bpfel.go' '*_bpfel.o'

## vmlinux: regenerate bpf/vmlinux.h from the running kernel's BTF.
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h

# systemctl only for a real install (no DESTDIR) on a machine running systemd.
SYSTEMCTL := $(if $(DESTDIR),true,$(if $(wildcard /run/systemd/system),systemctl,true))

## install: the binary and the systemd unit; an existing /etc/default file is kept.
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/bpfstats-tracker
	install -D -m 0644 deploy/systemd/bpfstats-tracker.service $(DESTDIR)/etc/systemd/system/bpfstats-tracker.service
	test -e $(DESTDIR)/etc/default/bpfstats-tracker || install -D -m 0644 deploy/systemd/bpfstats-tracker.env $(DESTDIR)/etc/default/bpfstats-tracker
	$(SYSTEMCTL) daemon-reload

uninstall:
	-$(SYSTEMCTL) disable --now bpfstats-tracker.service
	rm -f $(DESTDIR)$(PREFIX)/bin/bpfstats-tracker $(DESTDIR)/etc/systemd/system/bpfstats-tracker.service
	$(SYSTEMCTL) daemon-reload

## installcheck: install into a scratch DESTDIR, check the files, uninstall, check they are gone.
installcheck:
	@d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && \
	$(MAKE) --no-print-directory install DESTDIR=$$d >/dev/null && \
	"$$d$(PREFIX)/bin/bpfstats-tracker" version && \
	test -f "$$d/etc/systemd/system/bpfstats-tracker.service" && test -f "$$d/etc/default/bpfstats-tracker" && \
	$(MAKE) --no-print-directory uninstall DESTDIR=$$d >/dev/null && \
	test ! -e "$$d$(PREFIX)/bin/bpfstats-tracker" && test ! -e "$$d/etc/systemd/system/bpfstats-tracker.service" && \
	echo "installcheck: install and uninstall ok"

clean:
	rm -rf bin .cache
