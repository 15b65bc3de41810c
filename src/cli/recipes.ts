import '../quant/methods.ts';
import { builtinRecipeNames, explainRecipe, resolveRecipe } from '../quant/recipe.ts';
import { parse, printJson } from './args.ts';

export const RECIPES_HELP = `llmq recipes [--verbose] [--json]
  Lists the built-in recipes; --verbose spells out each one's exact formats, steps and calibration.`;

export async function recipesCommand(argv: string[]): Promise<void> {
  const { values } = parse('recipes', argv, {
    verbose: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  });
  const recipes = builtinRecipeNames().map(resolveRecipe);
  if (values.json) return printJson(recipes);
  for (const r of recipes)
    console.log(values.verbose ? `${explainRecipe(r)}\n` : `${r.name.padEnd(28)} ${r.description}`);
}
