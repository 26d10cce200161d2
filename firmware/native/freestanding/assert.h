/* For toolchains with no C library (Debian's RISC-V one without picolibc): the headers
   py/dynruntime.h reaches for, no more. The module calls none of these functions. */
#define assert(e) ((void)0)
