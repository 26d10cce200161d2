# micromlp_tiny_fast: the tiny engine's layer loop with the portable kernel's four-row
# blocking and zero skip (micromlp._linear), a script load() runs (a statement at a
# time) where the heap has room, in a namespace holding net; the weights must be in
# RAM or in a module (streaming keeps the row-at-a-time loop of micromlp_tiny_run.py).
# Same integers: each pass over the inputs feeds four rows, a zero input skips its
# four multiply-adds. A micro:bit v1 has no room for it and keeps the plain loop.
acc = [0, 0, 0, 0]  # the four rows' sums, handed to the requantizer


def layers():
    x = net.x
    for _, no, w, b, m, s, lo, hi, y, _, k, lm, ls, lf in net.layers:
        n = len(x)
        n2 = n + n
        n3 = n2 + n
        t = 0  # sum(w x) with weights stored as w + 128: start at b - 128 sum(x)
        for v in x:
            t += v
        t *= 128
        o = 0
        while o < no:
            if o + 3 < no:
                a0 = a1 = a2 = a3 = -t
                if b:
                    a0 += b[o]
                    a1 += b[o + 1]
                    a2 += b[o + 2]
                    a3 += b[o + 3]
                for v in x:
                    if v:
                        a0 += w[k] * v
                        a1 += w[k + n] * v
                        a2 += w[k + n2] * v
                        a3 += w[k + n3] * v
                    k += 1
                k += n3
                acc[0] = a0
                acc[1] = a1
                acc[2] = a2
                acc[3] = a3
                rows = 4
            else:
                a0 = (b[o] if b else 0) - t
                for v in x:
                    if v:
                        a0 += w[k] * v
                    k += 1
                acc[0] = a0
                rows = 1
            for r in range(rows):  # requantize as micromlp_tiny_run.net_layers does
                a = acc[r]
                sh = s[o]
                if sh < 15:
                    a = (a * m[o] + ((1 << sh) >> 1)) >> sh
                else:  # split at bit 15 so no product reaches 2**30 (docs/format.md)
                    a = ((a >> 15) * m[o] + ((1 << sh - 16) if sh > 15 else 0)
                         + (((a & 32767) * m[o] + (16384 if sh == 15 else 0)) >> 15)) >> (sh - 15)
                if a < 0 and lm:  # LeakyReLU
                    a = (max(a, lf) * lm + ((1 << ls) >> 1)) >> ls
                y[o] = lo if a < lo else (hi if a > hi else a)
                o += 1
        x = y


if not net.path:  # weights in RAM or in a module: the blocked loop
    net._layers = layers
