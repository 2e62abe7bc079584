/*
 * fuzz_common — what every libFuzzer driver of tests/fuzz shares: the
 * entry points libFuzzer calls or provides, and CHECK.
 *
 * CHECK is not assert(): it stays on whatever the build type (NDEBUG must
 * not turn an invariant off), and it names the failed condition before
 * abort(), which libFuzzer catches to save the input as a crash artifact.
 */
#ifndef RMX_FUZZ_COMMON_H
#define RMX_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* Every driver defines this: one execution over one input; returns 0. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* A driver may define this to mutate structure-aware (fuzz_record does). */
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned seed);
/* Provided by libFuzzer: its own mutation, for custom mutators to build on. */
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

#endif
