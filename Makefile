# dsv4 — build, run, test, bench. `make run` and `make test` install missing Debian packages first.
CC      ?= gcc
# Portable x86-64 code; the decode kernels are compiled for AVX2/FMA/F16C on their own and
# chosen at run time (src/kernels/matvec_avx2.c). Other CPUs: no -march.
ARCH    ?= $(if $(filter x86_64,$(shell uname -m)),-march=x86-64-v2,)
BLAS_INC = -I/usr/include/x86_64-linux-gnu/openblas-openmp
BLAS_LIB = -L/usr/lib/x86_64-linux-gnu/openblas-openmp -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas
CFLAGS  ?= -O3
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp $(ARCH) -Iinclude $(BLAS_INC) -fPIC
LDLIBS   = $(BLAS_LIB) -lcjson -lpcre2-8 -lutf8proc -lm -fopenmp

LIB_SRC = $(wildcard src/util/*.c src/io/*.c src/kernels/*.c src/model/*.c src/infer/*.c src/train/*.c)
CLI_SRC = $(wildcard src/cli/*.c)
HDRS    = $(wildcard include/*.h src/*.h src/cli/*.h src/io/*.h src/io/*.inc src/kernels/*.h)

BUILD  ?= build
LIB_OBJ = $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ = $(CLI_SRC:%.c=$(BUILD)/%.o)

.PHONY: all deps run test bench fixtures clean asan fuzz default-model
all: dsv4 libdsv4.a libdsv4.so $(BUILD)/test_unit $(BUILD)/test_api

# The test build: AddressSanitizer + UndefinedBehaviorSanitizer, in its own directory.
SAN_FLAGS = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
ASAN_OBJ  = $(LIB_SRC:%.c=build-asan/%.o) $(CLI_SRC:%.c=build-asan/%.o)
build-asan/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SAN_FLAGS) -c $< -o $@
build-asan/dsv4: $(ASAN_OBJ)
	$(CC) $(CFLAGS) $(SAN_FLAGS) -o $@ $^ $(LDLIBS) -ledit
build-asan/test_unit: tests/test_unit.c $(LIB_SRC:%.c=build-asan/%.o)
	$(CC) $(CFLAGS) $(SAN_FLAGS) -o $@ $^ $(LDLIBS)
build-asan/test_chat: tests/test_chat.c build-asan/src/io/chat.o
	$(CC) $(CFLAGS) $(SAN_FLAGS) -Isrc -o $@ $^ -lcjson -lm
asan: build-asan/dsv4 build-asan/test_unit build-asan/test_chat

# libFuzzer harnesses (clang): the tokenizer and the chat encoder/parser.
FUZZ_FLAGS = -std=c11 -D_GNU_SOURCE -O1 -g -fsanitize=fuzzer,address,undefined -Iinclude
build-fuzz/fuzz_tokenizer: tests/fuzz/fuzz_tokenizer.c src/io/tokenizer.c src/util/util.c src/io/unicode_gc.inc
	@mkdir -p build-fuzz
	clang $(FUZZ_FLAGS) -o $@ tests/fuzz/fuzz_tokenizer.c src/io/tokenizer.c src/util/util.c -lcjson -lpcre2-8
build-fuzz/fuzz_chat: tests/fuzz/fuzz_chat.c src/io/chat.c
	@mkdir -p build-fuzz
	clang $(FUZZ_FLAGS) -o $@ tests/fuzz/fuzz_chat.c src/io/chat.c -lcjson
fuzz: build-fuzz/fuzz_tokenizer build-fuzz/fuzz_chat

$(BUILD)/test_unit: tests/test_unit.c libdsv4.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# The public API alone, through the shared library.
$(BUILD)/test_api: tests/test_api.c libdsv4.so include/dsv4.h
	$(CC) -std=c11 -Wall -Wextra -O2 -Iinclude -o $@ tests/test_api.c -L. -Wl,-rpath,'$$ORIGIN/..' -ldsv4 -lm

deps:
	@scripts/install-deps.sh

# Only the functions of include/dsv4.h are exported from libdsv4.so.
$(BUILD)/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fvisibility=hidden -c $< -o $@

libdsv4.a: $(LIB_OBJ)
	ar rcs $@ $^

libdsv4.so: $(LIB_OBJ)
	$(CC) -shared -o $@ $^ $(LDLIBS)

dsv4: $(CLI_OBJ) libdsv4.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) libdsv4.a $(LDLIBS) -ledit

# The bundled default (models/default, committed): a small V4 model with every feature on (mHC,
# CSA + indexer, HCA, window, hash + learned MoE, MTP), trained by dsv4 on the Brown corpus with a
# tokenizer trained by dsv4 (configs/default.json; `make default-model` retrains it, about an hour).
DEFAULT_MODEL = models/default
DEFAULT_PROMPT = The committee said that the
run: deps
	@$(MAKE) --no-print-directory all
	./dsv4 run -m $(DEFAULT_MODEL) -p "$(DEFAULT_PROMPT)" -n 64 --temp 0.7 --top-p 0.9 --repeat-penalty 1.1 --seed 1

default-model: deps
	@$(MAKE) --no-print-directory dsv4
	scripts/train-default.sh

test: deps
	@$(MAKE) --no-print-directory all asan fuzz
	@tests/run.sh

bench: deps
	@$(MAKE) --no-print-directory all
	bench/decode.sh
	bench/quantize.sh
	bench/long.sh
	bench/tokenizer.sh
	bench/train.sh
	bench/engram.sh
	bench/engram-train.sh

# Regenerates the reference fixtures with the independent PyTorch reference (reference/).
fixtures: deps
	@$(MAKE) --no-print-directory all
	DSV4_EXTRA_PKGS=python3-torch scripts/install-deps.sh
	reference/make_fixtures.sh

clean:
	rm -rf $(BUILD) build-asan build-fuzz dsv4 libdsv4.a libdsv4.so
