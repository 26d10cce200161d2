/* (see assert.h) MicroPython's own errno values are used: MICROPY_USE_INTERNAL_ERRNO */
