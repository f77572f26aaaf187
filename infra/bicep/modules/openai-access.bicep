// Cognitive Services OpenAI User for one principal on one Azure OpenAI / AI Foundry account. Deployed at the
// account's resource group (main.bicep sets the scope from the account's resource id), so accounts in other
// resource groups or subscriptions work. The role allows inference only: no keys, no management.

@description('Name of the existing Azure OpenAI / AI Foundry account, in this module\'s resource group.')
param accountName string

@description('Principal (object) id that may call the account.')
param principalId string

@description('Type of the principal.')
@allowed([
  'ServicePrincipal'
  'User'
  'Group'
])
param principalType string = 'ServicePrincipal'

// Cognitive Services OpenAI User
var openAiUserRoleId = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'

resource account 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: accountName
}

resource openAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, openAiUserRoleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', openAiUserRoleId)
    principalId: principalId
    principalType: principalType
  }
}

@description('Resource id of the role assignment.')
output roleAssignmentId string = openAiUser.id
