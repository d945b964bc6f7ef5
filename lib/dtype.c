#include "dtype.h"

const char *wan_dtype_name(wan_dtype t) {
    switch (t) {
    case WAN_F32: return "F32";
    case WAN_BF16: return "BF16";
    case WAN_F16: return "F16";
    }
    return "?";
}

int wan_dtype_parse(const char *name, wan_dtype *out) {
    if (!strcmp(name, "F32")) *out = WAN_F32;
    else if (!strcmp(name, "BF16")) *out = WAN_BF16;
    else if (!strcmp(name, "F16")) *out = WAN_F16;
    else return -1;
    return 0;
}

float wan_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    return wan_bits_f32(u);
}

uint16_t wan_f32_to_f16(float f) {
    uint32_t u = wan_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow to inf (after rounding) */
    if (a < 0x38800000u) { /* subnormal or zero in f16 */
        float af = wan_bits_f32(a);
        /* scale so the f16 subnormal unit (2^-24) becomes 1, round to nearest even */
        float s = af * 16777216.0f;
        uint32_t m = (uint32_t)lrintf(s);
        return (uint16_t)(sign | m);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | (((r >> 23) - 127 + 15) << 10) | ((r >> 13) & 0x3ffu));
}

void wan_convert(void *dst, wan_dtype dt, const void *src, wan_dtype st, size_t n) {
    if (dt == st) {
        memcpy(dst, src, n * wan_dtype_size(dt));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float v;
        switch (st) {
        case WAN_F32: v = ((const float *)src)[i]; break;
        case WAN_BF16: v = wan_bf16_to_f32(((const uint16_t *)src)[i]); break;
        default: v = wan_f16_to_f32(((const uint16_t *)src)[i]); break;
        }
        switch (dt) {
        case WAN_F32: ((float *)dst)[i] = v; break;
        case WAN_BF16: ((uint16_t *)dst)[i] = wan_f32_to_bf16(v); break;
        default: ((uint16_t *)dst)[i] = wan_f32_to_f16(v); break;
        }
    }
}
