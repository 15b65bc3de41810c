/**
 * llama.cpp's 1-bit lattice types IQ1_S (1.56 bits a weight) and IQ1_M (1.75), byte for byte as
 * ggml-quants.c writes them (quantize_iq1_s, which asserts an importance matrix; quantize_iq1_m) and
 * reads them (dequantize_row_iq1_s / _iq1_m). Sources read (public): ggml/src/ggml-quants.c
 * (iq2xs_init_impl's kgrid_1bit_2048 and neighbour lists, quantize_row_iq1_s_impl,
 * quantize_row_iq1_m_impl, iq1_find_best_neighbour2) and ggml-common.h (block_iq1_s, block_iq1_m,
 * iq1m_scale_t, iq1s_grid, IQ1S_DELTA, IQ1M_DELTA) of ggml-org/llama.cpp as node-llama-cpp 3.22.1
 * bundles it.
 *
 * Block (50 bytes per 256): fp16 d, 32 low bytes of 11-bit grid indices, and per sub-block of 32 a u16
 * holding its four indices' high 3 bits, a 3-bit scale ls and a sign bit for the shift. Each group of 8
 * values is one of 2048 points of the levels -1, 0, 1; x = d (2 ls + 1) (level + delta), delta = +-0.125
 * per sub-block. The quantizer, per sub-block: weights importance * sqrt(sigma2 + x^2), sigma2 = 2 mean
 * x^2 of the super-block; the values sorted (stably, as glibc's merge sort does), every split into
 * three runs tried for levels shifted by +0.125 and by -0.125, the best weighted least-squares fit
 * kept; a group whose levels are off the grid takes the candidate (grid points at the 3 smallest
 * distances) nearest by weighted distance, and the scale is refitted. d = (largest scale) / 15, stored
 * times 1.125; ls the nearest 2 ls + 1. Without an importance matrix llmq weighs every column 1 (for
 * searches); recipes and the export refuse IQ1_S without the imatrix step as llama-quantize does.
 *
 * IQ1_M (56 bytes per 256): 32 low bytes of the grid indices, per sub-block of 16 a byte with the two
 * indices' high 3 bits and a shift bit per group of 8, 3-bit scales per 16, and the fp16 d spread over
 * the scales' top nibbles. The same exact split search, per 16, with each group of 8 shifted its own
 * way (4 combinations); without an importance matrix the weights are x^2, as in C. d = (largest
 * scale) / 15, then refitted by least squares over the whole super-block with the 3-bit scales fixed,
 * stored times 1.1125. llama-quantize writes IQ1_M too only with an importance matrix.
 * All arithmetic is float32 in C's order (Math.fround after each operation).
 */

import { f16BitsToNumber, numberToF16Bits } from '../tensor/dtype.ts';
import {
  blockCount,
  GGML_BLOCK,
  type GgmlGroupCodes,
  groupCodes,
  type Importance,
  readF16,
  writeF16,
} from './ggml.ts';
import { nearestInt } from './ggml-search.ts';
import {
  checkSuperBlockRows,
  type GridSpec,
  gridOf,
  readU16,
  superBlockImportance,
  superBlockSigma2,
  valueWeights,
  writeU16,
} from './lattice.ts';

/** iq2xs_init_impl's kgrid_1bit_2048: level l_i (0..2, the value l_i - 1) of point p at bits 2i of p. */
const KGRID_2048 = Uint16Array.from([
  0, 2, 5, 8, 10, 17, 21, 32, 34, 40, 42, 69, 81, 84, 86, 101, 128, 130, 136, 138, 149, 160, 162, 168, 170,
  260, 261, 273, 276, 278, 281, 282, 293, 321, 326, 329, 338, 341, 346, 353, 356, 358, 360, 389, 401, 404,
  406, 421, 512, 514, 520, 522, 533, 544, 546, 552, 554, 581, 593, 601, 612, 617, 640, 642, 648, 650, 657,
  661, 665, 672, 674, 680, 682, 1041, 1044, 1046, 1061, 1089, 1097, 1109, 1114, 1124, 1125, 1169, 1177, 1189,
  1281, 1284, 1285, 1286, 1301, 1304, 1306, 1321, 1344, 1349, 1354, 1360, 1361, 1364, 1365, 1366, 1369, 1376,
  1378, 1381, 1384, 1386, 1409, 1425, 1429, 1432, 1434, 1441, 1444, 1445, 1446, 1449, 1556, 1561, 1601, 1604,
  1616, 1618, 1621, 1624, 1632, 1633, 1638, 1641, 1669, 1681, 1684, 1689, 2048, 2050, 2056, 2058, 2069, 2080,
  2082, 2088, 2090, 2117, 2129, 2134, 2149, 2176, 2178, 2184, 2186, 2197, 2208, 2210, 2216, 2218, 2309, 2321,
  2324, 2329, 2340, 2341, 2369, 2384, 2385, 2389, 2401, 2404, 2409, 2449, 2452, 2454, 2457, 2469, 2560, 2562,
  2568, 2570, 2581, 2592, 2594, 2600, 2602, 2629, 2641, 2649, 2657, 2661, 2688, 2690, 2693, 2696, 2698, 2709,
  2720, 2722, 2728, 2730, 4112, 4113, 4116, 4121, 4132, 4133, 4161, 4164, 4176, 4181, 4184, 4193, 4196, 4197,
  4201, 4241, 4244, 4246, 4257, 4261, 4353, 4356, 4358, 4361, 4368, 4370, 4373, 4376, 4385, 4388, 4393, 4421,
  4426, 4432, 4433, 4434, 4436, 4437, 4438, 4441, 4448, 4453, 4484, 4498, 4501, 4513, 4516, 4625, 4628, 4630,
  4645, 4672, 4678, 4681, 4690, 4693, 4696, 4698, 4708, 4710, 4741, 4753, 4756, 4758, 4773, 5121, 5126, 5129,
  5140, 5141, 5144, 5145, 5153, 5158, 5185, 5189, 5190, 5192, 5194, 5201, 5204, 5205, 5206, 5209, 5218, 5221,
  5224, 5252, 5257, 5264, 5268, 5269, 5272, 5273, 5274, 5281, 5284, 5285, 5289, 5378, 5381, 5386, 5393, 5396,
  5397, 5398, 5401, 5408, 5410, 5413, 5416, 5418, 5441, 5444, 5445, 5446, 5457, 5458, 5460, 5461, 5462, 5465,
  5466, 5473, 5476, 5477, 5478, 5481, 5504, 5506, 5508, 5509, 5512, 5514, 5520, 5521, 5524, 5525, 5526, 5529,
  5530, 5536, 5538, 5541, 5633, 5636, 5637, 5638, 5653, 5654, 5656, 5658, 5665, 5670, 5696, 5698, 5700, 5701,
  5704, 5706, 5713, 5717, 5718, 5720, 5721, 5729, 5732, 5733, 5736, 5737, 5738, 5766, 5770, 5778, 5781, 5796,
  5801, 6161, 6166, 6181, 6209, 6212, 6214, 6217, 6224, 6229, 6232, 6234, 6240, 6241, 6244, 6246, 6249, 6277,
  6289, 6292, 6309, 6416, 6418, 6421, 6426, 6433, 6437, 6466, 6468, 6469, 6472, 6481, 6484, 6485, 6486, 6489,
  6490, 6496, 6501, 6506, 6537, 6545, 6546, 6549, 6552, 6561, 6566, 6569, 6665, 6678, 6692, 6694, 6724, 6726,
  6729, 6736, 6738, 6741, 6744, 6753, 6758, 6761, 6789, 6801, 6806, 6810, 8192, 8194, 8200, 8202, 8213, 8224,
  8226, 8229, 8232, 8234, 8261, 8273, 8281, 8289, 8293, 8320, 8322, 8328, 8330, 8341, 8352, 8354, 8357, 8360,
  8362, 8453, 8465, 8468, 8473, 8485, 8514, 8516, 8521, 8533, 8536, 8538, 8545, 8548, 8549, 8550, 8581, 8592,
  8598, 8601, 8613, 8705, 8712, 8714, 8721, 8725, 8736, 8738, 8744, 8746, 8773, 8785, 8790, 8793, 8805, 8833,
  8840, 8842, 8849, 8853, 8864, 8866, 8872, 8874, 9221, 9236, 9238, 9241, 9253, 9284, 9285, 9286, 9289, 9298,
  9301, 9304, 9306, 9318, 9349, 9361, 9364, 9369, 9377, 9381, 9481, 9493, 9505, 9513, 9536, 9541, 9544, 9553,
  9556, 9557, 9561, 9570, 9573, 9576, 9609, 9616, 9620, 9621, 9624, 9626, 9633, 9636, 9638, 9641, 9733, 9744,
  9746, 9753, 9765, 9793, 9801, 9813, 9824, 9825, 9833, 9860, 9862, 9872, 9882, 10240, 10242, 10248, 10250,
  10261, 10272, 10274, 10280, 10282, 10309, 10321, 10324, 10341, 10368, 10370, 10376, 10378, 10400, 10402,
  10408, 10410, 10505, 10513, 10516, 10521, 10533, 10566, 10569, 10578, 10581, 10593, 10596, 10598, 10601,
  10629, 10640, 10646, 10649, 10660, 10661, 10752, 10754, 10760, 10762, 10784, 10786, 10792, 10794, 10821,
  10833, 10838, 10841, 10853, 10880, 10882, 10888, 10890, 10901, 10912, 10914, 10920, 10922, 16389, 16401,
  16406, 16421, 16457, 16466, 16469, 16472, 16474, 16481, 16484, 16486, 16532, 16537, 16545, 16550, 16640,
  16641, 16644, 16646, 16649, 16658, 16661, 16662, 16664, 16666, 16673, 16678, 16681, 16709, 16712, 16714,
  16721, 16724, 16725, 16726, 16729, 16730, 16741, 16744, 16746, 16769, 16772, 16774, 16784, 16786, 16789,
  16800, 16801, 16802, 16901, 16913, 16916, 16918, 16933, 16961, 16978, 16981, 16986, 16996, 17001, 17033,
  17044, 17061, 17409, 17429, 17433, 17449, 17477, 17480, 17482, 17489, 17492, 17493, 17494, 17505, 17506,
  17509, 17512, 17514, 17537, 17542, 17545, 17552, 17554, 17557, 17568, 17569, 17577, 17665, 17666, 17669,
  17674, 17681, 17684, 17685, 17686, 17689, 17696, 17701, 17706, 17729, 17732, 17733, 17734, 17737, 17744,
  17745, 17748, 17749, 17750, 17752, 17753, 17761, 17764, 17765, 17766, 17769, 17794, 17796, 17797, 17800,
  17809, 17812, 17813, 17814, 17817, 17818, 17829, 17832, 17834, 17921, 17925, 17929, 17940, 17941, 17944,
  17946, 17953, 17956, 17961, 17984, 17986, 17989, 17992, 18000, 18001, 18002, 18005, 18006, 18009, 18018,
  18021, 18024, 18049, 18053, 18058, 18068, 18069, 18081, 18084, 18086, 18437, 18449, 18453, 18458, 18469,
  18498, 18505, 18512, 18517, 18520, 18529, 18532, 18534, 18537, 18565, 18577, 18580, 18582, 18585, 18597,
  18689, 18693, 18694, 18698, 18704, 18708, 18709, 18712, 18721, 18724, 18726, 18752, 18757, 18762, 18769,
  18770, 18772, 18773, 18774, 18777, 18784, 18786, 18789, 18790, 18794, 18822, 18825, 18834, 18837, 18838,
  18840, 18849, 18852, 18854, 18857, 18966, 19012, 19014, 19017, 19029, 19032, 19034, 19044, 19049, 19092,
  19109, 20481, 20484, 20485, 20486, 20489, 20498, 20501, 20506, 20513, 20516, 20521, 20544, 20549, 20552,
  20561, 20564, 20565, 20566, 20569, 20581, 20584, 20614, 20617, 20629, 20632, 20640, 20641, 20646, 20649,
  20741, 20744, 20745, 20746, 20753, 20756, 20757, 20758, 20760, 20761, 20768, 20773, 20774, 20776, 20778,
  20801, 20804, 20805, 20806, 20809, 20816, 20817, 20818, 20820, 20821, 20822, 20824, 20825, 20826, 20833,
  20836, 20837, 20838, 20841, 20866, 20869, 20881, 20884, 20885, 20886, 20889, 20896, 20901, 20906, 20993,
  20998, 21010, 21013, 21018, 21025, 21028, 21058, 21061, 21066, 21073, 21076, 21077, 21078, 21081, 21090,
  21093, 21125, 21136, 21138, 21141, 21145, 21146, 21156, 21508, 21509, 21521, 21524, 21525, 21526, 21528,
  21529, 21537, 21541, 21544, 21546, 21569, 21572, 21573, 21574, 21577, 21578, 21584, 21585, 21588, 21589,
  21590, 21592, 21593, 21594, 21601, 21602, 21604, 21605, 21606, 21609, 21632, 21640, 21642, 21649, 21652,
  21653, 21654, 21657, 21665, 21668, 21669, 21674, 21761, 21762, 21764, 21765, 21766, 21769, 21776, 21777,
  21778, 21780, 21781, 21782, 21785, 21786, 21793, 21796, 21797, 21798, 21801, 21824, 21825, 21826, 21828,
  21829, 21830, 21832, 21833, 21840, 21841, 21842, 21844, 21845, 21846, 21848, 21849, 21850, 21856, 21857,
  21860, 21861, 21862, 21864, 21865, 21866, 21889, 21892, 21893, 21897, 21898, 21904, 21905, 21908, 21909,
  21910, 21912, 21913, 21921, 21924, 21925, 21926, 21929, 22016, 22017, 22018, 22020, 22022, 22024, 22025,
  22033, 22036, 22037, 22040, 22041, 22048, 22049, 22050, 22052, 22053, 22054, 22056, 22057, 22081, 22085,
  22086, 22088, 22089, 22090, 22096, 22097, 22098, 22100, 22101, 22102, 22104, 22105, 22106, 22113, 22116,
  22117, 22121, 22146, 22149, 22150, 22152, 22153, 22154, 22161, 22165, 22170, 22178, 22181, 22182, 22184,
  22185, 22532, 22533, 22534, 22537, 22544, 22549, 22552, 22561, 22570, 22597, 22600, 22602, 22609, 22612,
  22613, 22614, 22616, 22617, 22624, 22626, 22628, 22629, 22658, 22665, 22672, 22674, 22677, 22680, 22689,
  22697, 22785, 22786, 22789, 22794, 22801, 22804, 22805, 22806, 22809, 22821, 22849, 22852, 22853, 22854,
  22857, 22864, 22865, 22866, 22868, 22869, 22870, 22872, 22873, 22874, 22881, 22884, 22885, 22886, 22889,
  22913, 22917, 22921, 22929, 22932, 22933, 22934, 22936, 22937, 22949, 23044, 23048, 23061, 23066, 23072,
  23077, 23078, 23081, 23109, 23112, 23113, 23121, 23125, 23126, 23128, 23129, 23138, 23141, 23144, 23146,
  23169, 23178, 23186, 23189, 23190, 23192, 23194, 23201, 24581, 24596, 24598, 24601, 24613, 24644, 24656,
  24661, 24662, 24664, 24666, 24673, 24676, 24678, 24681, 24705, 24726, 24741, 24833, 24836, 24838, 24841,
  24850, 24853, 24865, 24866, 24870, 24873, 24901, 24905, 24913, 24917, 24918, 24921, 24933, 24934, 24938,
  24964, 24970, 24978, 24981, 24993, 24998, 25001, 25105, 25110, 25113, 25152, 25153, 25158, 25173, 25174,
  25176, 25184, 25221, 25233, 25238, 25253, 25617, 25618, 25621, 25622, 25626, 25633, 25638, 25641, 25664,
  25666, 25669, 25672, 25674, 25681, 25684, 25685, 25686, 25689, 25690, 25696, 25698, 25701, 25732, 25733,
  25737, 25744, 25746, 25748, 25749, 25750, 25752, 25754, 25761, 25764, 25769, 25861, 25864, 25866, 25873,
  25877, 25878, 25881, 25924, 25925, 25926, 25929, 25936, 25937, 25940, 25941, 25942, 25945, 25953, 25956,
  25957, 25958, 25961, 25990, 25993, 25994, 26001, 26005, 26006, 26009, 26010, 26018, 26021, 26022, 26024,
  26114, 26121, 26133, 26144, 26150, 26152, 26153, 26176, 26181, 26184, 26186, 26193, 26196, 26197, 26198,
  26200, 26202, 26208, 26213, 26216, 26240, 26242, 26245, 26250, 26260, 26262, 26264, 26265, 26272, 26276,
  26278, 26282, 26646, 26649, 26661, 26689, 26706, 26709, 26714, 26721, 26729, 26757, 26769, 26776, 26790,
  26881, 26884, 26896, 26901, 26913, 26916, 26918, 26921, 26944, 26945, 26949, 26950, 26952, 26961, 26964,
  26965, 26966, 26969, 26976, 26981, 26986, 27010, 27012, 27018, 27029, 27041, 27044, 27045, 27049, 27153,
  27158, 27160, 27201, 27204, 27209, 27216, 27221, 27224, 27226, 27236, 27237, 27241, 27270, 27284, 27288,
  27290, 27302, 32768, 32770, 32776, 32778, 32800, 32802, 32808, 32810, 32837, 32848, 32849, 32852, 32854,
  32857, 32869, 32896, 32898, 32904, 32906, 32917, 32928, 32930, 32936, 32938, 33029, 33041, 33044, 33046,
  33049, 33061, 33089, 33092, 33097, 33104, 33106, 33109, 33110, 33112, 33113, 33124, 33126, 33129, 33157,
  33161, 33172, 33174, 33177, 33189, 33280, 33282, 33288, 33290, 33301, 33312, 33314, 33320, 33322, 33361,
  33364, 33369, 33381, 33408, 33410, 33416, 33418, 33429, 33440, 33442, 33448, 33450, 33812, 33817, 33857,
  33860, 33873, 33877, 33882, 33889, 33892, 33897, 33940, 33945, 34049, 34057, 34066, 34069, 34074, 34086,
  34089, 34112, 34113, 34117, 34120, 34129, 34132, 34133, 34134, 34137, 34138, 34149, 34150, 34152, 34154,
  34177, 34180, 34182, 34185, 34192, 34194, 34197, 34200, 34214, 34321, 34326, 34329, 34341, 34369, 34372,
  34377, 34378, 34384, 34389, 34393, 34394, 34401, 34406, 34410, 34437, 34449, 34458, 34468, 34816, 34818,
  34824, 34826, 34837, 34848, 34850, 34856, 34858, 34881, 34885, 34897, 34900, 34905, 34917, 34921, 34944,
  34946, 34952, 34954, 34965, 34976, 34978, 34984, 34986, 35077, 35078, 35089, 35092, 35094, 35109, 35137,
  35140, 35142, 35145, 35152, 35154, 35157, 35162, 35169, 35172, 35205, 35222, 35225, 35237, 35328, 35330,
  35336, 35338, 35349, 35360, 35362, 35368, 35370, 35397, 35409, 35412, 35414, 35456, 35458, 35464, 35466,
  35477, 35488, 35490, 35496, 35498, 36869, 36881, 36886, 36888, 36889, 36901, 36929, 36934, 36937, 36949,
  36952, 36954, 36969, 36970, 36997, 37009, 37012, 37014, 37017, 37029, 37121, 37124, 37126, 37129, 37136,
  37141, 37144, 37146, 37153, 37156, 37158, 37161, 37184, 37189, 37200, 37201, 37204, 37205, 37206, 37209,
  37218, 37221, 37252, 37254, 37266, 37269, 37272, 37281, 37284, 37286, 37289, 37381, 37393, 37396, 37401,
  37413, 37444, 37446, 37449, 37456, 37458, 37461, 37464, 37478, 37481, 37509, 37524, 37526, 37545, 37889,
  37892, 37894, 37904, 37909, 37912, 37926, 37952, 37962, 37969, 37972, 37973, 37974, 37976, 37977, 37984,
  37985, 37986, 37989, 38020, 38022, 38034, 38036, 38037, 38040, 38049, 38057, 38144, 38149, 38152, 38154,
  38160, 38161, 38164, 38165, 38166, 38169, 38177, 38181, 38185, 38186, 38209, 38212, 38213, 38214, 38217,
  38224, 38225, 38226, 38228, 38229, 38230, 38232, 38233, 38234, 38241, 38244, 38245, 38246, 38249, 38273,
  38277, 38280, 38289, 38290, 38292, 38293, 38294, 38297, 38298, 38304, 38306, 38309, 38312, 38314, 38401,
  38404, 38416, 38421, 38425, 38432, 38438, 38441, 38469, 38472, 38473, 38481, 38482, 38485, 38486, 38489,
  38501, 38504, 38530, 38532, 38537, 38538, 38546, 38548, 38549, 38564, 38566, 38569, 38917, 38934, 38937,
  38949, 38977, 38982, 38992, 38994, 38997, 38998, 39002, 39012, 39013, 39045, 39057, 39062, 39065, 39077,
  39172, 39174, 39177, 39184, 39186, 39189, 39192, 39194, 39200, 39201, 39204, 39206, 39232, 39234, 39237,
  39240, 39242, 39249, 39252, 39253, 39254, 39257, 39266, 39269, 39270, 39274, 39297, 39300, 39312, 39314,
  39317, 39322, 39329, 39334, 39429, 39445, 39461, 39492, 39494, 39497, 39504, 39509, 39512, 39521, 39557,
  39569, 39572, 39573, 39574, 40960, 40962, 40968, 40970, 40981, 40992, 40994, 41000, 41002, 41029, 41041,
  41044, 41046, 41049, 41088, 41090, 41096, 41098, 41109, 41120, 41122, 41128, 41130, 41221, 41225, 41233,
  41236, 41238, 41241, 41242, 41286, 41289, 41297, 41301, 41304, 41306, 41313, 41316, 41349, 41360, 41362,
  41366, 41369, 41474, 41480, 41482, 41488, 41497, 41506, 41512, 41514, 41541, 41553, 41558, 41561, 41573,
  41600, 41602, 41608, 41610, 41621, 41632, 41634, 41640, 41642, 42009, 42021, 42049, 42052, 42064, 42068,
  42069, 42072, 42074, 42081, 42085, 42086, 42088, 42089, 42117, 42246, 42249, 42256, 42258, 42261, 42264,
  42278, 42281, 42306, 42309, 42321, 42324, 42325, 42326, 42329, 42341, 42346, 42369, 42372, 42373, 42374,
  42377, 42386, 42389, 42392, 42501, 42513, 42518, 42522, 42529, 42533, 42564, 42566, 42570, 42578, 42581,
  42582, 42584, 42592, 42594, 42630, 42640, 42645, 42646, 42649, 42657, 42660, 42662, 43008, 43010, 43016,
  43018, 43040, 43042, 43048, 43050, 43089, 43092, 43094, 43097, 43136, 43138, 43144, 43146, 43157, 43168,
  43170, 43176, 43178, 43269, 43284, 43289, 43297, 43301, 43329, 43344, 43349, 43354, 43361, 43366, 43369,
  43408, 43414, 43520, 43522, 43528, 43530, 43552, 43554, 43560, 43562, 43601, 43604, 43606, 43648, 43650,
  43656, 43658, 43669, 43680, 43682, 43688, 43690,
]);

export const IQ1_S_BLOCK_BYTES = GGML_BLOCK.IQ1_S.bytes;
export const IQ1_M_BLOCK_BYTES = GGML_BLOCK.IQ1_M.bytes;
const QK_K = 256;
const SUB = 32;
const M_SUB = 16;
const fr = Math.fround;
const FLT_MAX = 3.4028234663852886e38;

export const IQ1_GRID: Readonly<GridSpec> = {
  points: KGRID_2048,
  group: 8,
  levelBits: 2,
  maxLevel: 2,
  distances: 3,
};

/** The values of levels 0, 1, 2 shifted up and down by IQ1S_DELTA (= IQ1M_DELTA). */
const UP = [-0.875, 0.125, 1.125] as const;
const DOWN = [-1.125, -0.125, 0.875] as const;
type Shifted = typeof UP | typeof DOWN;
/** IQ1_M's split search, per shift (0 up, 1 down): v2, v0^2 - v1^2 and v1^2 - v2^2, in float32 */
const TOP = Float64Array.from([UP, DOWN], (q) => q[2]);
const C1 = Float64Array.from([UP, DOWN], (q) => fr(fr(q[0] * q[0]) - fr(q[1] * q[1])));
const C2 = Float64Array.from([UP, DOWN], (q) => fr(fr(q[1] * q[1]) - fr(q[2] * q[2])));

/**
 * Codes 0..5: level l with the shift up (l) or down (l + 3); values 8 (l - 1 +- 0.125), so the
 * scale per 32 (IQ1_M: per 16) is d (2 ls + 1) / 8.
 */
const CODE_LEVELS = Int8Array.from({ length: 16 }, (_, c) => (c < 6 ? [-7, 1, 9, -9, -1, 7][c] : 0));

/** A searched sub-block: its scale, the grid index of each group of 8 and whether each is shifted down. */
interface SubBlock {
  scale: number;
  grid: number[];
  down: boolean[];
}

/** Indices 0..n-1 of the values at x[at], sorted ascending by value (stably, as glibc's merge sort). */
function sortedOrder(x: Float32Array, at: number, n: number): number[] {
  return Array.from({ length: n }, (_, i) => i).sort((a, b) => x[at + a] - x[at + b]);
}

/** The best fit so far: sumqx^2 / sumq2 compared as C compares it, in float32. */
class BestFit {
  score = -FLT_MAX;
  scale = 0;
  /** whether the fit beats the best so far (it becomes the best) */
  better(sumqx: number, sumq2: number): boolean {
    if (!(sumq2 > 0 && fr(sumqx * sumqx) > fr(this.score * sumq2))) return false;
    this.scale = fr(sumqx / sumq2);
    this.score = fr(this.scale * sumqx);
    return true;
  }
}

type Split = { i1: number; i2: number };

/** sum over the three runs [0, i1), [i1, i2), [i2, n) of prefix sums s of the run's sum times q (squared: times q^2). */
function runSums(s: Float32Array, q: Shifted, i1: number, i2: number, square: boolean): number {
  const n = s.length - 1;
  const term = (v: number, qi: number) => (square ? fr(fr(v * qi) * qi) : fr(v * qi));
  const a = term(fr(s[i1] - s[0]), q[0]);
  const b = term(fr(s[i2] - s[i1]), q[1]);
  return fr(fr(a + b) + term(fr(s[n] - s[i2]), q[2]));
}

/** IQ1_S: the best split of the 32 sorted values into levels 0 / 1 / 2, both groups shifted alike. */
function bestSplitS(x: Float32Array, at: number, w: Float32Array, order: number[]) {
  const sumx = new Float32Array(SUB + 1);
  const sumw = new Float32Array(SUB + 1);
  order.forEach((i, j) => {
    sumx[j + 1] = fr(sumx[j] + fr(w[i] * x[at + i]));
    sumw[j + 1] = fr(sumw[j] + w[i]);
  });
  const fit = new BestFit();
  let found: (Split & { down: boolean }) | undefined;
  for (let i1 = 0; i1 <= SUB; i1++)
    for (let i2 = i1; i2 <= SUB; i2++)
      for (const q of [UP, DOWN])
        if (fit.better(runSums(sumx, q, i1, i2, false), runSums(sumw, q, i1, i2, true)))
          found = { i1, i2, down: q === DOWN };
  return found && { ...found, scale: fit.scale };
}

/**
 * IQ1_M: the best split of the 16 sorted values, each group of 8 shifted its own way. With levels
 * v0 - v1 = v1 - v2 = -1, a split's sum w x q per half is T v2 - S(i1) - S(i2) (prefix sums S per half).
 */
function bestSplitM(x: Float32Array, at: number, w: Float32Array, order: number[]) {
  const px = [new Float32Array(M_SUB + 1), new Float32Array(M_SUB + 1)];
  const pw = [new Float32Array(M_SUB + 1), new Float32Array(M_SUB + 1)];
  order.forEach((i, j) => {
    const h = i < 8 ? 0 : 1;
    px[h][j + 1] = fr(px[h][j] + fr(w[i] * x[at + i]));
    px[1 - h][j + 1] = px[1 - h][j];
    pw[h][j + 1] = fr(pw[h][j] + w[i]);
    pw[1 - h][j + 1] = pw[1 - h][j];
  });
  // sum w x q and sum w q^2 of half h with shift d, at 2 h + d
  const qx = new Float64Array(4);
  const q2 = new Float64Array(4);
  const fit = new BestFit();
  let found: (Split & { down: [boolean, boolean] }) | undefined;
  for (let i1 = 0; i1 <= M_SUB; i1++)
    for (let i2 = i1; i2 <= M_SUB; i2++) {
      for (let h = 0; h < 2; h++) {
        const sx = fr(px[h][i1] + px[h][i2]);
        for (let d = 0; d < 2; d++) {
          qx[2 * h + d] = fr(fr(px[h][M_SUB] * TOP[d]) - sx);
          q2[2 * h + d] = fr(
            fr(fr(fr(pw[h][M_SUB] * TOP[d]) * TOP[d]) + fr(pw[h][i1] * C1[d])) + fr(pw[h][i2] * C2[d]),
          );
        }
      }
      for (let k = 0; k < 4; k++) {
        const [d0, d1] = [k >> 1, k & 1];
        if (fit.better(fr(qx[d0] + qx[2 + d1]), fr(q2[d0] + q2[2 + d1])))
          found = { i1, i2, down: [d0 === 1, d1 === 1] };
      }
    }
  return found && { ...found, scale: fit.scale };
}

/** bestNeighbour's weighted distance of value i of the group to level l, at 3 i + l (filled per call) */
const levelTerms = new Float64Array(24);

/** iq1_find_best_neighbour2: the candidate of an off-grid group nearest by weighted distance; its levels into L. */
function bestNeighbour(
  key: number,
  x: Float32Array,
  at: number,
  w: Float32Array,
  k: number,
  scale: number,
  q: Shifted,
  L: Uint8Array,
) {
  const g = gridOf(IQ1_GRID);
  // each value's weighted squared distance to each of the 3 levels, rounded as C rounds it per candidate
  for (let i = 0; i < 8; i++)
    for (let l = 0; l < 3; l++) {
      const diff = fr(fr(scale * q[l]) - x[at + 8 * k + i]);
      levelTerms[3 * i + l] = fr(fr(w[8 * k + i] * diff) * diff);
    }
  let best = FLT_MAX;
  let pick = -1;
  for (let c = g.start[key]; c < g.start[key + 1]; c++) {
    const p = 8 * g.list[c];
    let d2 = 0;
    // the terms are >= 0: once the running sum reaches best, this candidate loses
    for (let i = 0; i < 8 && d2 < best; i++) d2 = fr(d2 + levelTerms[3 * i + g.levels[p + i]]);
    if (d2 < best) {
      best = d2;
      pick = g.list[c];
    }
  }
  for (let i = 0; i < 8; i++) L[8 * k + i] = g.levels[8 * pick + i];
  return pick;
}

/** The grid key of the 8 levels at L[at]. */
function keyOf(L: Uint8Array, at: number): number {
  let key = 0;
  for (let i = 0; i < 8; i++) key |= L[at + i] << (2 * i);
  return key;
}

/**
 * The levels of a split (flipped where its scale is negative), each group put on the grid, and the
 * scale refitted if any group had to move; undefined for no split.
 */
function settle(
  x: Float32Array,
  at: number,
  w: Float32Array,
  order: number[],
  split: (Split & { scale: number; down: boolean[] }) | undefined,
): SubBlock | undefined {
  if (!split) return undefined;
  const n = order.length;
  const L = new Uint8Array(n);
  order.forEach((i, j) => {
    L[i] = j < split.i1 ? 0 : j < split.i2 ? 1 : 2;
  });
  let { scale, down } = split;
  if (scale < 0) {
    for (let i = 0; i < n; i++) L[i] = 2 - L[i];
    scale = -scale;
    down = down.map((d) => !d);
  }
  const g = gridOf(IQ1_GRID);
  const qOf = (k: number) => (down[k] ? DOWN : UP);
  let allOnGrid = true;
  const grid = down.map((_, k) => {
    const key = keyOf(L, 8 * k);
    if (g.index[key] >= 0) return g.index[key];
    allOnGrid = false;
    return bestNeighbour(key, x, at, w, k, scale, qOf(k), L);
  });
  if (!allOnGrid) {
    let sumqx = 0;
    let sumq2 = 0;
    for (let i = 0; i < n; i++) {
      const q = qOf(i >> 3)[L[i]];
      sumqx = fr(sumqx + fr(fr(w[i] * q) * x[at + i]));
      sumq2 = fr(sumq2 + fr(fr(w[i] * q) * q));
    }
    if (sumqx > 0 && sumq2 > 0) scale = fr(sumqx / sumq2);
  }
  return { scale, grid, down };
}

/** The largest magnitude of n values at x[at]. */
function maxAbs(x: Float32Array, at: number, n: number): number {
  let max = Math.abs(x[at]);
  for (let i = 1; i < n; i++) max = Math.max(max, Math.abs(x[at + i]));
  return max;
}

/** quantize_row_iq1_s_impl's search of the sub-block of 32 at x[at]; undefined where it skips it. */
function searchSubBlockS(x: Float32Array, at: number, w: Float32Array): SubBlock | undefined {
  if (maxAbs(x, at, SUB) < fr(1e-12)) return undefined;
  const order = sortedOrder(x, at, SUB);
  const split = bestSplitS(x, at, w, order);
  return settle(
    x,
    at,
    w,
    order,
    split && { ...split, down: [split.down, split.down, split.down, split.down] },
  );
}

/** quantize_row_iq1_m_impl's search of the sub-block of 16 at x[at]; undefined where it skips it. */
function searchSubBlockM(x: Float32Array, at: number, w: Float32Array): SubBlock | undefined {
  if (maxAbs(x, at, M_SUB) < fr(1e-7)) return undefined;
  const order = sortedOrder(x, at, M_SUB);
  return settle(x, at, w, order, bestSplitM(x, at, w, order));
}

/** The 3-bit scale l of a sub-block, scale ~ d (2 l + 1) with id = 1 / d. */
const scaleCode = (id: number, scale: number) =>
  Math.max(0, Math.min(7, nearestInt(fr(0.5 * fr(fr(id * scale) - 1)))));

/** x (rows of a multiple of 256) -> IQ1_S blocks, as llama.cpp's quantize_iq1_s (imatrix: its quant_weights). */
export function quantizeIq1S(x: Float32Array, imatrix?: Importance): Uint8Array {
  checkSuperBlockRows(x, imatrix, 'IQ1_S');
  const out = new Uint8Array((x.length / QK_K) * IQ1_S_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK_K; b++) {
    const o = b * IQ1_S_BLOCK_BYTES;
    const sigma2 = superBlockSigma2(x, b * QK_K, 2);
    const qw = superBlockImportance(imatrix, b);
    const subs = Array.from({ length: QK_K / SUB }, (_, ib) => {
      const at = b * QK_K + SUB * ib;
      return searchSubBlockS(x, at, valueWeights(x, at, SUB, sigma2, qw?.subarray(SUB * ib), 'unit'));
    });
    let maxScale = 0;
    subs.forEach((s, ib) => {
      if (!s) return;
      let h = 0;
      s.grid.forEach((j, k) => {
        out[o + 2 + 4 * ib + k] = j & 255;
        h |= (j >> 8) << (3 * k);
      });
      writeU16(out, o + 34 + 2 * ib, h);
      maxScale = Math.max(maxScale, s.scale);
    });
    if (!maxScale) continue;
    const d = fr(maxScale / 15);
    writeF16(out, o, fr(d * 1.125));
    const id = fr(1 / d);
    subs.forEach((s, ib) => {
      const l = scaleCode(id, s?.scale ?? 0);
      writeU16(out, o + 34 + 2 * ib, readU16(out, o + 34 + 2 * ib) | ((s?.down[0] ? l | 8 : l) << 12));
    });
  }
  return out;
}

/** x (rows of a multiple of 256) -> IQ1_M blocks, as llama.cpp's quantize_iq1_m (imatrix: its quant_weights). */
export function quantizeIq1M(x: Float32Array, imatrix?: Importance): Uint8Array {
  checkSuperBlockRows(x, imatrix, 'IQ1_M');
  const out = new Uint8Array((x.length / QK_K) * IQ1_M_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK_K; b++) {
    const o = b * IQ1_M_BLOCK_BYTES;
    const sigma2 = superBlockSigma2(x, b * QK_K, 2);
    const qw = superBlockImportance(imatrix, b);
    const weights = Array.from({ length: QK_K / M_SUB }, (_, ib) =>
      valueWeights(x, b * QK_K + M_SUB * ib, M_SUB, sigma2, qw?.subarray(M_SUB * ib), 'x2'),
    );
    const subs = weights.map((w, ib) => searchSubBlockM(x, b * QK_K + M_SUB * ib, w));
    let maxScale = 0;
    subs.forEach((s, ib) => {
      if (!s) return;
      out[o + 2 * ib] = s.grid[0] & 255;
      out[o + 2 * ib + 1] = s.grid[1] & 255;
      out[o + 32 + ib] = (s.grid[0] >> 8) | ((s.grid[1] >> 8) << 4);
      maxScale = Math.max(maxScale, s.scale);
    });
    if (!maxScale) continue;
    const id = fr(1 / fr(maxScale / 15));
    const ls = subs.map((s) => scaleCode(id, s?.scale ?? 0));
    subs.forEach((s, ib) => {
      const at = o + 48 + 2 * (ib >> 2);
      writeU16(out, at, readU16(out, at) | (ls[ib] << (3 * (ib % 4))));
      out[o + 32 + ib] |= (s?.down[0] ? 0x08 : 0) | (s?.down[1] ? 0x80 : 0);
    });
    const d = refitD(x, b * QK_K, out, o, weights, ls, fr(maxScale / 15));
    const h = numberToF16Bits(fr(d * fr(1.1125)));
    for (let k = 0; k < 4; k++) {
      const at = o + 48 + 2 * k;
      writeU16(out, at, readU16(out, at) | (((h >> (4 * k)) & 15) << 12));
    }
  }
  return out;
}

/** IQ1_M's d: the least-squares fit over the super-block of the stored levels and 3-bit scales (else d). */
function refitD(
  x: Float32Array,
  at: number,
  out: Uint8Array,
  o: number,
  weights: Float32Array[],
  ls: number[],
  d: number,
): number {
  const lv = gridOf(IQ1_GRID).levels;
  let sumqx = 0;
  let sumq2 = 0;
  weights.forEach((w, ib) => {
    const qh = out[o + 32 + ib];
    for (let k = 0; k < 2; k++) {
      const j = out[o + 2 * ib + k] | (((qh >> (4 * k)) & 7) << 8);
      const shifted = qh & (k ? 0x80 : 0x08) ? DOWN : UP;
      for (let i = 0; i < 8; i++) {
        const q = fr(shifted[lv[8 * j + i]] * (2 * ls[ib] + 1));
        const wi = w[8 * k + i];
        sumqx = fr(sumqx + fr(fr(wi * q) * x[at + M_SUB * ib + 8 * k + i]));
        sumq2 = fr(sumq2 + fr(fr(wi * q) * q));
      }
    }
  });
  return sumq2 > 0 ? fr(sumqx / sumq2) : d;
}

/** The codes of the 8 values of grid point j (level, +3 when shifted down) at codes[at]. */
function pointCodes(j: number, down: boolean, codes: Uint8Array, at: number): void {
  const lv = gridOf(IQ1_GRID).levels;
  for (let i = 0; i < 8; i++) codes[at + i] = lv[8 * j + i] + (down ? 3 : 0);
}

/** IQ1_S blocks as codes (level, +3 for the downward shift) and per-32 scale d (2 ls + 1) / 8: x = scale * level[code]. */
export function unpackIq1S(bytes: Uint8Array, n = (bytes.length / IQ1_S_BLOCK_BYTES) * QK_K): GgmlGroupCodes {
  const u: GgmlGroupCodes = { ...groupCodes(n, SUB, 4, false), levels: CODE_LEVELS };
  for (let b = 0; b < blockCount(bytes, 'IQ1_S', n); b++) {
    const o = b * IQ1_S_BLOCK_BYTES;
    const d = readF16(bytes, o);
    for (let ib = 0; ib < QK_K / SUB; ib++) {
      const h = readU16(bytes, o + 34 + 2 * ib);
      u.scales[b * 8 + ib] = fr(fr(d * (2 * ((h >> 12) & 7) + 1)) * 0.125);
      for (let k = 0; k < 4; k++) {
        const j = bytes[o + 2 + 4 * ib + k] | (((h >> (3 * k)) & 7) << 8);
        pointCodes(j, (h & 0x8000) !== 0, u.codes, b * QK_K + SUB * ib + 8 * k);
      }
    }
  }
  return u;
}

/** IQ1_M's fp16 d, spread over the top nibbles of its four u16 scale words. */
function iq1mD(bytes: Uint8Array, o: number): number {
  let h = 0;
  for (let k = 0; k < 4; k++) h |= (readU16(bytes, o + 48 + 2 * k) >> 12) << (4 * k);
  return f16BitsToNumber(h);
}

/** IQ1_M blocks as codes (level, +3 for the downward shift) and per-16 scale d (2 ls + 1) / 8: x = scale * level[code]. */
export function unpackIq1M(bytes: Uint8Array, n = (bytes.length / IQ1_M_BLOCK_BYTES) * QK_K): GgmlGroupCodes {
  const u: GgmlGroupCodes = { ...groupCodes(n, M_SUB, 4, false), levels: CODE_LEVELS };
  for (let b = 0; b < blockCount(bytes, 'IQ1_M', n); b++) {
    const o = b * IQ1_M_BLOCK_BYTES;
    const d = iq1mD(bytes, o);
    for (let ib = 0; ib < QK_K / M_SUB; ib++) {
      const l = (readU16(bytes, o + 48 + 2 * (ib >> 2)) >> (3 * (ib % 4))) & 7;
      u.scales[b * 16 + ib] = fr(fr(d * (2 * l + 1)) * 0.125);
      const qh = bytes[o + 32 + ib];
      for (let k = 0; k < 2; k++) {
        const j = bytes[o + 2 * ib + k] | (((qh >> (4 * k)) & 7) << 8);
        pointCodes(j, (qh & (k ? 0x80 : 0x08)) !== 0, u.codes, b * QK_K + M_SUB * ib + 8 * k);
      }
    }
  }
  return u;
}

/** The grid index of the 8 codes at codes[at] (their levels must be a grid point). */
function pointOfCodes(codes: Uint8Array, at: number, what: string): number {
  let key = 0;
  for (let i = 0; i < 8; i++) key |= (codes[at + i] % 3) << (2 * i);
  const j = gridOf(IQ1_GRID).index[key];
  if (j < 0) throw new RangeError(`${what}: the levels of the codes at ${at} are not a grid point`);
  return j;
}

/** Writes an IQ1_S block's grid indices from 256 codes (d and each sub-block's scale and shift bits are kept). */
export function packIq1SCodes(codes: Uint8Array, at: number, out: Uint8Array, o: number): void {
  for (let ib = 0; ib < QK_K / SUB; ib++) {
    let h = readU16(out, o + 34 + 2 * ib) & 0xf000;
    for (let k = 0; k < 4; k++) {
      const j = pointOfCodes(codes, at + SUB * ib + 8 * k, 'iq1_s');
      out[o + 2 + 4 * ib + k] = j & 255;
      h |= (j >> 8) << (3 * k);
    }
    writeU16(out, o + 34 + 2 * ib, h);
  }
}

/** Writes an IQ1_M block's grid indices from 256 codes (the shift bits, scales and d are kept). */
export function packIq1MCodes(codes: Uint8Array, at: number, out: Uint8Array, o: number): void {
  for (let ib = 0; ib < QK_K / M_SUB; ib++) {
    let qh = out[o + 32 + ib] & 0x88;
    for (let k = 0; k < 2; k++) {
      const j = pointOfCodes(codes, at + M_SUB * ib + 8 * k, 'iq1_m');
      out[o + 2 * ib + k] = j & 255;
      qh |= (j >> 8) << (4 * k);
    }
    out[o + 32 + ib] = qh;
  }
}
