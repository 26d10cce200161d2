// micromlp_c: the engine's integer kernels in C, as a MicroPython dynamic native module
// (py/dynruntime.mk), one .mpy per architecture in firmware/native/<arch>/.
//
// Same contract and the same integers as the viper kernels and micromlp_portable.linear:
// rows q[ROW0]..q[ROW_END]-1 of y = clamp(round((W x + b) * mult / 2**shift)), the
// layer's parameters in the int32 array q (its slots below, described in
// micromlp_net.py). micromlp_load.py has proven the model before any of this runs:
// every sum and product stays below 2**30, so int32 never wraps. The kernels still
// check each buffer's typecode and size against q, so a wrong call raises a
// ValueError rather than reading past a buffer. Nothing here allocates (an error
// does, as it raises).
//
// 8-bit weights are stored offset-binary, u = w + 128: sum(w x) = sum(u x) - 128 sum(x).
// Four rows share each pass over the inputs. On cores with the DSP extension
// (Cortex-M4/M7: __ARM_FEATURE_DSP) one 32-bit load takes four weights of a row and two
// SMLADs do their four multiply-adds, where the layer's inputs fit in 16 bits.

#include "py/dynruntime.h"

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

// Bytes of net8's scratch per input of the widest layer (the DSP path's packed inputs)
#if defined(__ARM_FEATURE_DSP)
#define SCRATCH 2
#else
#define SCRATCH 0
#endif

// Bumped when a function's arguments or q's layout change: micromlp.py refuses a module
// of another ABI (a stale .mpy beside a newer engine) and says so.
#define ABI 1

// q's slots (micromlp_net.py)
enum {
    N_IN, N_OUT, LO, HI, HAS_BIAS, ROW0, ROW_END, W_OFF, SX, W_ZERO, X_SX,
    SLOPE_M, SLOPE_S, SLOPE_RND, SLOPE_FLOOR, WIDE, Q
};
// Net.bounds' slots: the number of inputs, their clamp, the number of outputs
enum { B_N, B_LO, B_HI, B_N_OUT = 4, B_SIZE = 7 };

// Errors name the buffer and what was expected: "micromlp_c: w holds 100 bytes, the
// layer needs 128". No printf in a native module: the message is put together here.
static char *put(char *p, const char *s) {
    while (*s) {
        *p++ = *s++;
    }
    return p;
}

static char *put_uint(char *p, uint32_t u) {
    // by subtraction: armv6m has no divide instruction, and the module links no runtime
    static const uint32_t tens[] = {1000000000, 100000000, 10000000, 1000000, 100000,
                                    10000, 1000, 100, 10, 1};
    int started = 0;
    for (int k = 0; k < 10; k++) {
        char d = '0';
        while (u >= tens[k]) {
            u -= tens[k];
            d++;
        }
        if (d != '0' || started || k == 9) {
            *p++ = d;
            started = 1;
        }
    }
    return p;
}

// The bytes `count` items of `size` bytes (at most 4) take after `off` bytes, in unsigned
// arithmetic that cannot wrap: a count or offset from a caller's array can be anything,
// and one past 2**30 (or negative) stands for more than any buffer holds.
static uint32_t span(int32_t off, uint32_t count, uint32_t size) {
    if (off < 0 || count > 0x3FFFFFFF) {
        return 0xFFFFFFFF;
    }
    uint32_t n = count * size;
    return n + (uint32_t)off < n ? 0xFFFFFFFF : n + (uint32_t)off;
}

static MP_NORETURN void raise(char *msg, char *p) {
    mp_raise_type_arg(&mp_type_ValueError, mp_obj_new_str(msg, p - msg));
}

// A buffer's data after checking its typecode and that it holds at least `need` bytes.
static void *buffer(mp_obj_t o, char typecode, uint32_t need, const char *what) {
    mp_buffer_info_t bi;
    char msg[100];
    char *p = put(put(msg, "micromlp_c: "), what);
    char want[2] = {typecode == 'B' ? 'B' : typecode, 0};
    if (!mp_get_buffer(o, &bi, MP_BUFFER_READ)) {
        raise(msg, put(put(put(p, " is not a buffer (expected typecode '"), want), "')"));
    }
    // 'B': bytes (typecode 'B'), a bytearray (MicroPython's BYTEARRAY_TYPECODE, 1) or
    // another byte buffer
    if (typecode == 'B' ? (bi.typecode != 'B' && bi.typecode != 'b' && bi.typecode != 1)
        : bi.typecode != typecode) {
        char got[2] = {bi.typecode > ' ' ? bi.typecode : '?', 0};
        p = bi.typecode == 1 ? put(p, " is a bytearray")
                             : put(put(put(p, " has typecode '"), got), "'");
        raise(msg, put(put(put(p, ", expected typecode '"), want), "'"));
    }
    if (bi.len < need) {
        p = put(put_uint(put(p, " holds "), bi.len), " bytes, the layer needs ");
        raise(msg, need == 0xFFFFFFFF ? put(p, "more than any buffer holds")
                                      : put_uint(p, need));
    }
    return bi.buf;
}

// A layer's q, checked: its rows within its outputs, room for their parameters
static int32_t *params(mp_obj_t o) {
    int32_t *q = buffer(o, 'i', span(0, Q, 4), "q");
    if (q[N_IN] < 1 || q[N_OUT] < 1 || q[N_OUT] > 0xFFFF || q[N_IN] > 0xFFFF || q[ROW0] < 0
        || q[ROW0] > q[ROW_END] || q[ROW_END] > q[N_OUT] || q[W_OFF] < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("micromlp_c: q does not describe a layer"));
    }
    return buffer(o, 'i', span(0, Q + 3 * q[N_OUT], 4), "q");
}

// round((acc) * mult / 2**shift) with the channel's c = (bias, mult, shift), then
// LeakyReLU and the clamp: micromlp_portable.linear's epilogue. From shift 15 on, acc splits
// at bit 15 so no product reaches 2**30. The rounding term 2**(t-1) is (1 << t) >> 1.
static int32_t requantize(int32_t acc, const int32_t *c, const int32_t *q) {
    int32_t m = c[1], sh = c[2];
    if (sh < 15) {
        acc = (acc * m + ((1 << sh) >> 1)) >> sh;
    } else {
        sh -= 15;
        acc = ((acc >> 15) * m + ((1 << sh) >> 1) + (((acc & 32767) * m + (sh ? 0 : 16384)) >> 15))
              >> sh;
    }
    if (acc < 0 && q[SLOPE_M]) {
        if (acc < q[SLOPE_FLOOR]) {
            acc = q[SLOPE_FLOOR];
        }
        acc = (acc * q[SLOPE_M] + q[SLOPE_RND]) >> q[SLOPE_S];
    }
    return acc < q[LO] ? q[LO] : (acc > q[HI] ? q[HI] : acc);
}

#if defined(__ARM_FEATURE_DSP)
typedef uint32_t u32_unaligned __attribute__((aligned(1)));

// the bytes 0 and 2 of w as two halfwords; of w rotated by 8 (bytes 1 and 3): UXTB16 with
// its rotation (gcc's __uxtb16 on a rotated value costs a separate instruction)
static inline uint32_t even_bytes(uint32_t w) {
    uint32_t r;
    __asm__ ("uxtb16 %0, %1" : "=r" (r) : "r" (w));
    return r;
}

static inline uint32_t odd_bytes(uint32_t w) {
    uint32_t r;
    __asm__ ("uxtb16 %0, %1, ror #8" : "=r" (r) : "r" (w));
    return r;
}

// xp = the inputs as halfword pairs matching even_bytes/odd_bytes of four weights:
// (x0, x2), (x1, x3) for each four inputs. Inputs must fit in 16 bits.
static void pack_pairs(const int32_t *x, int32_t n, uint32_t *xp) {
    for (int32_t i = 0; i + 4 <= n; i += 4) {
        *xp++ = ((uint32_t)x[i] & 0xFFFF) | ((uint32_t)x[i + 2] << 16);
        *xp++ = ((uint32_t)x[i + 1] & 0xFFFF) | ((uint32_t)x[i + 3] << 16);
    }
}

// a += sum(u x) over four rows u, u + n, u + 2n, u + 3n, four inputs a step: one load
// takes four weights of a row, UXTB16 splits them into two halfword pairs, SMLAD does
// two multiply-adds with a pair of inputs from xp. Returns how many inputs it did.
static int32_t dot4_dsp(const uint32_t *xp, const uint8_t *u, int32_t n, int32_t *a) {
    int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    const uint8_t *end = u + (n & ~3);
    const uint8_t *u2 = u + 2 * n;
    while (u < end) {
        uint32_t xe = xp[0], xo = xp[1];
        uint32_t w = *(const u32_unaligned *)u;
        a0 = __smlad(even_bytes(w), xe, a0);
        a0 = __smlad(odd_bytes(w), xo, a0);
        w = *(const u32_unaligned *)(u + n);
        a1 = __smlad(even_bytes(w), xe, a1);
        a1 = __smlad(odd_bytes(w), xo, a1);
        w = *(const u32_unaligned *)u2;
        a2 = __smlad(even_bytes(w), xe, a2);
        a2 = __smlad(odd_bytes(w), xo, a2);
        w = *(const u32_unaligned *)(u2 + n);
        a3 = __smlad(even_bytes(w), xe, a3);
        a3 = __smlad(odd_bytes(w), xo, a3);
        xp += 2;
        u += 4;
        u2 += 4;
    }
    a[0] = a0;
    a[1] = a1;
    a[2] = a2;
    a[3] = a3;
    return n & ~3;
}
#endif

// a[r] += sum(u_r x) for rows r < 4 (u_r = u + r n), inputs from index i on
static void dot4(const int32_t *x, const uint8_t *u, int32_t n, int32_t i, int32_t *a) {
    const uint8_t *u1 = u + n, *u2 = u1 + n, *u3 = u2 + n;
    int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    for (; i < n; i++) {
        int32_t xv = x[i];
        a0 += u[i] * xv;
        a1 += u1[i] * xv;
        a2 += u2[i] * xv;
        a3 += u3[i] * xv;
    }
    a[0] = a0;
    a[1] = a1;
    a[2] = a2;
    a[3] = a3;
}

// rows ROW0..ROW_END-1 of an 8-bit layer; u: row ROW0's weights; xp: NULL, or room for
// n / 2 words where the inputs lie in [-32768, 32767] (the DSP path's condition)
static void layer8(const int32_t *x, const uint8_t *u, const int32_t *q, int32_t *y, uint32_t *xp) {
    int32_t n = q[N_IN];
    int32_t s = 0;
    for (int32_t i = 0; i < n; i++) {
        s += x[i];
    }
    s *= q[W_ZERO];
    #if defined(__ARM_FEATURE_DSP)
    if (xp) {
        pack_pairs(x, n, xp);
    }
    #else
    (void)xp;
    #endif
    for (int32_t o = q[ROW0]; o < q[ROW_END]; o += 4) {
        int32_t rows = q[ROW_END] - o < 4 ? q[ROW_END] - o : 4;
        int32_t a[4];
        const int32_t *c = q + Q + 3 * o;
        for (int32_t r = 0; r < 4; r++) {
            a[r] = (r < rows && q[HAS_BIAS] ? c[3 * r] : 0) - s;
        }
        if (rows == 4) {
            int32_t i = 0;
            #if defined(__ARM_FEATURE_DSP)
            if (xp) {
                i = dot4_dsp(xp, u, n, a);
            }
            #endif
            dot4(x, u, n, i, a);
        } else {  // the last one to three rows, one at a time
            for (int32_t r = 0; r < rows; r++) {
                const uint8_t *ur = u + r * n;
                int32_t acc = a[r];
                for (int32_t i = 0; i < n; i++) {
                    acc += ur[i] * x[i];
                }
                a[r] = acc;
            }
        }
        for (int32_t r = 0; r < rows; r++) {
            y[o + r] = requantize(a[r], c + 3 * r, q);
        }
        u += rows * n;
    }
}

// rows ROW0..ROW_END-1 of a 16-bit layer; w: row ROW0's weights. A wide layer forms its
// sums in the inputs' two bytes: b + sum(w (x >> 8)) + (sum(w (x & 255)) >> 8).
static void layer16(const int32_t *x, const int16_t *w, const int32_t *q, int32_t *y) {
    int32_t n = q[N_IN];
    for (int32_t o = q[ROW0]; o < q[ROW_END]; o++, w += n) {
        const int32_t *c = q + Q + 3 * o;
        int32_t acc = q[HAS_BIAS] ? c[0] : 0;
        if (q[WIDE]) {
            int32_t low = 0;
            for (int32_t i = 0; i < n; i++) {
                acc += w[i] * (x[i] >> 8);
                low += w[i] * (x[i] & 255);
            }
            acc += low >> 8;
        } else {
            for (int32_t i = 0; i < n; i++) {
                acc += w[i] * x[i];
            }
        }
        y[o] = requantize(acc, c, q);
    }
}

// The arguments (x, w, q, y) of linear8 and linear16, checked: w holds `size`-byte
// weights, q[W_OFF] bytes in
typedef struct {
    int32_t *q;
    const int32_t *x;
    const void *w;
    int32_t *y;
} layer_args_t;

static layer_args_t layer_args(const mp_obj_t *args, char typecode, uint32_t size) {
    layer_args_t a;
    a.q = params(args[2]);
    int32_t n = a.q[N_IN];
    uint32_t rows = a.q[ROW_END] - a.q[ROW0];
    a.x = buffer(args[0], 'i', span(0, n, 4), "x");
    // (rounded down to the weight size, as the viper kernels read it: aligned)
    a.w = (const uint8_t *)buffer(args[1], typecode, span(a.q[W_OFF], rows * n, size), "w")
          + (a.q[W_OFF] & ~(int32_t)(size - 1));
    a.y = buffer(args[3], 'i', span(0, a.q[N_OUT], 4), "y");
    return a;
}

// linear8(x, w, q, y): micromlp_viper_layers.linear8's contract (streaming, per-layer runs)
static mp_obj_t linear8(size_t n_args, const mp_obj_t *args) {
    layer_args_t a = layer_args(args, 'B', 1);
    layer8(a.x, a.w, a.q, a.y, NULL);  // (no room to pack the inputs: the plain loops)
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(linear8_obj, 4, 4, linear8);

// linear16(x, w, q, y): w an array('h'), q[W_OFF] a byte offset into it
static mp_obj_t linear16(size_t n_args, const mp_obj_t *args) {
    layer_args_t a = layer_args(args, 'h', 2);
    layer16(a.x, a.w, a.q, a.y);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(linear16_obj, 4, 4, linear16);

// net8(src, plan): every layer of an all-8-bit network in one call, as micromlp_viper.net8:
// plan = (x, bounds, scratch, then w, q, y of each layer); src clamped into x first;
// scratch: an array('i') of at least half the widest layer's inputs (the DSP path packs
// them there). Returns 1, or 0 when src is not an array('i') of the right length
// (nothing computed: the caller then takes the checked path).
static mp_obj_t net8(mp_obj_t src, mp_obj_t plan_in) {
    size_t len;
    mp_obj_t *plan;
    mp_obj_get_array(plan_in, &len, &plan);
    size_t end = 3;
    while (end < len) {  // (no % : armv6m has no divide and the module links no runtime)
        end += 3;
    }
    if (len < 6 || end != len) {
        mp_raise_ValueError(
            MP_ERROR_TEXT("micromlp_c: net8's plan is not (x, bounds, scratch, w, q, y...)"));
    }
    const int32_t *b = buffer(plan[1], 'i', span(0, B_SIZE, 4), "bounds");
    int32_t n = b[B_N];
    mp_buffer_info_t bi;
    if (!mp_get_buffer(src, &bi, MP_BUFFER_READ) || bi.typecode != 'i'
        || bi.len != span(0, n, 4)) {
        return MP_OBJ_NEW_SMALL_INT(0);
    }
    const int32_t *xs = bi.buf;
    int32_t *x = buffer(plan[0], 'i', span(0, n, 4), "x");
    int32_t lo = b[B_LO], hi = b[B_HI];
    for (int32_t i = 0; i < n; i++) {
        int32_t v = xs[i];
        x[i] = v < lo ? lo : (v > hi ? hi : v);
    }
    for (size_t l = 3; l < len; l += 3) {
        int32_t *q = params(plan[l + 1]);
        if (q[N_IN] != n || q[ROW0] != 0 || q[ROW_END] != q[N_OUT]) {
            mp_raise_ValueError(
                MP_ERROR_TEXT("micromlp_c: a layer's inputs do not match the one before"));
        }
        const uint8_t *w = buffer(plan[l], 'B', span(q[W_OFF], (uint32_t)q[N_IN] * q[N_OUT], 1),
                                  "w");
        int32_t *y = buffer(plan[l + 2], 'i', span(0, q[N_OUT], 4), "y");
        uint32_t *xp = NULL;  // the packed inputs' room, where the inputs fit in 16 bits
        #if defined(__ARM_FEATURE_DSP)
        if (lo >= -32768 && hi <= 32767) {
            xp = buffer(plan[2], 'i', span(0, n & ~3, SCRATCH), "scratch");
        }
        #endif
        layer8(x, w + q[W_OFF], q, y, xp);
        x = y;
        n = q[N_OUT];
        lo = q[LO];
        hi = q[HI];
    }
    return MP_OBJ_NEW_SMALL_INT(1);
}
static MP_DEFINE_CONST_FUN_OBJ_2(net8_obj, net8);

// prep(x, xq, b, lim): xq = x clamped to lim = [lo, hi], compared as objects so an int
// past the machine word clamps right (micromlp_viper.prep); a float is refused.
static mp_obj_t prep(size_t n_args, const mp_obj_t *args) {
    const int32_t *b = buffer(args[2], 'i', span(0, B_SIZE, 4), "bounds");
    int32_t *xq = buffer(args[1], 'i', span(0, b[B_N], 4), "xq");
    mp_obj_t lo_o = mp_obj_subscr(args[3], MP_OBJ_NEW_SMALL_INT(0), MP_OBJ_SENTINEL);
    mp_obj_t hi_o = mp_obj_subscr(args[3], MP_OBJ_NEW_SMALL_INT(1), MP_OBJ_SENTINEL);
    for (int32_t i = 0; i < b[B_N]; i++) {
        mp_obj_t o = mp_obj_subscr(args[0], MP_OBJ_NEW_SMALL_INT(i), MP_OBJ_SENTINEL);
        int32_t v;
        if (mp_obj_is_small_int(o)) {
            mp_int_t s = MP_OBJ_SMALL_INT_VALUE(o);
            v = s < b[B_LO] ? b[B_LO] : (s > b[B_HI] ? b[B_HI] : (int32_t)s);
        } else if (mp_binary_op(MP_BINARY_OP_LESS, o, lo_o) == mp_const_true) {
            v = b[B_LO];
        } else if (mp_binary_op(MP_BINARY_OP_MORE, o, hi_o) == mp_const_true) {
            v = b[B_HI];
        } else {
            v = mp_obj_get_int(o);  // a float in range: TypeError, as array('i') gives
        }
        xq[i] = v;
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(prep_obj, 4, 4, prep);

// copy(y, out, b): out[i] = y[i] for the b[4] outputs (out: an array('i') or a list)
static mp_obj_t copy(mp_obj_t y_in, mp_obj_t out, mp_obj_t b_in) {
    const int32_t *b = buffer(b_in, 'i', span(0, B_SIZE, 4), "bounds");
    const int32_t *y = buffer(y_in, 'i', span(0, b[B_N_OUT], 4), "y");
    mp_buffer_info_t bi;
    if (mp_get_buffer(out, &bi, MP_BUFFER_WRITE) && bi.typecode == 'i'
        && bi.len >= span(0, b[B_N_OUT], 4)) {
        int32_t *o = bi.buf;
        for (int32_t i = 0; i < b[B_N_OUT]; i++) {
            o[i] = y[i];
        }
    } else {
        for (int32_t i = 0; i < b[B_N_OUT]; i++) {
            mp_obj_subscr(out, MP_OBJ_NEW_SMALL_INT(i), MP_OBJ_NEW_SMALL_INT(y[i]));
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_3(copy_obj, copy);

// argmax(y, b): index of the largest of the b[4] outputs, the first one on a tie
static mp_obj_t argmax(mp_obj_t y_in, mp_obj_t b_in) {
    const int32_t *b = buffer(b_in, 'i', span(0, B_SIZE, 4), "bounds");
    const int32_t *y = buffer(y_in, 'i', span(0, b[B_N_OUT], 4), "y");
    int32_t best = 0;
    for (int32_t i = 1; i < b[B_N_OUT]; i++) {
        if (y[i] > y[best]) {
            best = i;
        }
    }
    return MP_OBJ_NEW_SMALL_INT(best);
}
static MP_DEFINE_CONST_FUN_OBJ_2(argmax_obj, argmax);

mp_obj_t mpy_init(mp_obj_fun_bc_t *self, size_t n_args, size_t n_kw, mp_obj_t *args) {
    MP_DYNRUNTIME_INIT_ENTRY
    mp_store_global(MP_QSTR_ABI, MP_OBJ_NEW_SMALL_INT(ABI));
    mp_store_global(MP_QSTR_SCRATCH, MP_OBJ_NEW_SMALL_INT(SCRATCH));
    mp_store_global(MP_QSTR_ARCH, mp_obj_new_str(MICROMLP_ARCH, sizeof(MICROMLP_ARCH) - 1));
    mp_store_global(MP_QSTR_linear8, MP_OBJ_FROM_PTR(&linear8_obj));
    mp_store_global(MP_QSTR_linear16, MP_OBJ_FROM_PTR(&linear16_obj));
    mp_store_global(MP_QSTR_net8, MP_OBJ_FROM_PTR(&net8_obj));
    mp_store_global(MP_QSTR_prep, MP_OBJ_FROM_PTR(&prep_obj));
    mp_store_global(MP_QSTR_copy, MP_OBJ_FROM_PTR(&copy_obj));
    mp_store_global(MP_QSTR_argmax, MP_OBJ_FROM_PTR(&argmax_obj));
    MP_DYNRUNTIME_INIT_EXIT
}
