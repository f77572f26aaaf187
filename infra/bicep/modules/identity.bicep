// The app's user-assigned managed identity: every data-plane call (storage, Service Bus, Key Vault,
// Azure OpenAI, Application Insights) is made with it, so no key or connection string exists anywhere.

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the identity.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

@description('Resource id, for the app\'s identity block and Flex deployment storage authentication.')
output id string = identity.id

@description('Client id: AzureWebJobsStorage__clientId, AZURE_CLIENT_ID and the other identity settings.')
output clientId string = identity.properties.clientId

@description('Principal (object) id, for role assignments.')
output principalId string = identity.properties.principalId

@description('Name of the identity.')
output name string = identity.name
