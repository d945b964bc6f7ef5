/* Element types of tensors in files and buffers, and exact conversions between them. */
#ifndef WAN_DTYPE_H
#define WAN_DTYPE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum { WAN_F32 = 0, WAN_BF16 = 1, WAN_F16 = 2 } wan_dtype;

static inline size_t wan_dtype_size(wan_dtype t) { return t == WAN_F32 ? 4 : 2; }
/* Names as in safetensors headers: "F32", "BF16", "F16". */
const char *wan_dtype_name(wan_dtype t);
int wan_dtype_parse(const char *name, wan_dtype *out); /* 0 ok, -1 unknown */

static inline uint32_t wan_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float wan_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* fp32 -> bf16, round to nearest even; NaN stays NaN (quiet). */
static inline uint16_t wan_f32_to_bf16(float f) {
    uint32_t u = wan_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float wan_bf16_to_f32(uint16_t h) { return wan_bits_f32((uint32_t)h << 16); }

float wan_f16_to_f32(uint16_t h);
uint16_t wan_f32_to_f16(float f); /* round to nearest even */

/* Convert n elements between any two types (same type: memcpy). */
void wan_convert(void *dst, wan_dtype dt, const void *src, wan_dtype st, size_t n);

#endif
