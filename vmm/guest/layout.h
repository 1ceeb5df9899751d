/* Guest-physical layout shared by the test guest and the vmm (src/testguest/layout.rs mirrors it). */
#define TG_PARAMS_ADDR 0x3000UL
#define TG_REPORT_ADDR 0x4000UL
#define TG_REPORT_STRIDE 64UL
#define TG_PARAMS_MAGIC 0x5448415754475031UL /* "THAWTGP1" */
#define TG_PORT 0x0f00

#define TG_PATTERN_SEQUENTIAL 0
#define TG_PATTERN_RANDOM 1
#define TG_PATTERN_HOTSET 2
#define TG_PATTERN_POINTER_CHASE 3

#define TG_CODE_START 1
#define TG_CODE_PROGRESS 2
#define TG_CODE_DONE 3
#define TG_CODE_BAD_PARAMS 4
