/* Fixed-size integer types for the freestanding test guest. */
#ifndef TG_TYPES_H
#define TG_TYPES_H
typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
#endif
