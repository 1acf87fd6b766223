/* The attention forward of few queries per (sample, head) pair (a decoder's
 * new tokens, one per beam), which attention.c hands to attention_few.c:
 * entry points of the ISA pass that includes this (isa.h), called by that
 * pass's attention.c only. */
#ifndef DC_CPU_ATTENTION_FEW_H
#define DC_CPU_ATTENTION_FEW_H

#include "attention.h"
#include "isa.h"

/* Pairs of at most this many queries take the path of attention_few.c. */
#define CPU_ATTENTION_FEW_QUERIES 4

#ifdef CPU_ISA_SUFFIX
/* Floats of scratch cpu_attention_few_forward needs on `threads` threads. */
int64_t CPU_ISA_FN(cpu_attention_few_scratch)(const cpu_attention_dims *a, int threads);
/* cpu_attention_forward for a->lq <= CPU_ATTENTION_FEW_QUERIES. */
void CPU_ISA_FN(cpu_attention_few_forward)(const cpu_attention_dims *a, int threads, float *out,
                                           float *p, const float *q, const float *k,
                                           const float *v, float *work);
#endif

#endif
